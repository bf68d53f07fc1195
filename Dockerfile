# smcroute.py in a container:
#   docker build -t smcroute .
#   docker run -d --net=host --cap-add=NET_ADMIN -v /run/smcroute:/run/smcroute smcroute
# It needs CAP_NET_ADMIN (multicast routing) and CAP_NET_RAW (its raw
# sockets); Docker grants NET_RAW by default.  Any base image with python3
# will do: --build-arg BASE=...
ARG BASE=python:3-alpine
FROM ${BASE}

COPY smcroute.py /usr/sbin/smcroute
COPY smcroute.conf /etc/smcroute.conf
# The socket lives in a directory of its own, so that the host can share it
# with a volume and talk to the daemon: socat - UNIX:/run/smcroute/smcroute.sock
RUN chmod 0755 /usr/sbin/smcroute && mkdir -p /run/smcroute

STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --retries=3 \
    CMD ["python3", "-I", "/usr/sbin/smcroute", "-u", "/run/smcroute/smcroute.sock", "show", "interfaces"]
# Foreground, logging to stderr, as PID 1: SIGTERM stops it cleanly.
ENTRYPOINT ["python3", "-I", "/usr/sbin/smcroute", "-n", "-u", "/run/smcroute/smcroute.sock"]
CMD ["-f", "/etc/smcroute.conf"]
