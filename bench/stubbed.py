"""smcroute.py, its multicast routing socket options stubbed out.

    python3 bench/stubbed.py [smcroute options]

For bench/native.py, on a kernel without multicast routing: MRT_INIT,
MRT_ADD_VIF, MRT_ADD_MFC and the rest return at once, and everything else
is the real daemon.  It imports smcroute.py as a module, so its bytecode is
cached as the pyz's is.  Never a test: the tests use the kernel.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MRT_OPTIONS = range(200, 213)       # MRT_BASE .. MRT_BASE + 12, as MRT6_*
MRT_LEVELS = (0, 41)                # IPPROTO_IP, IPPROTO_IPV6


def stubbed_smcroute():
    """The smcroute module, its routing sockets' MRT options doing nothing."""
    sys.path.insert(0, ROOT)
    import smcroute

    class Stubbed(smcroute.Socket):
        __slots__ = ()

        def setsockopt(self, level, option, value, *rest):
            if level in MRT_LEVELS and option in MRT_OPTIONS:
                return None
            return super().setsockopt(level, option, value, *rest)

    smcroute.Socket = Stubbed       # the module's name for sockets: its own made here
    return smcroute


if __name__ == "__main__":
    sys.exit(stubbed_smcroute().main(["smcroute"] + sys.argv[1:]))
