#!/bin/sh
# Stand-in for OpenWrt's procd and its shell functions: every call is
# appended to $PROCD_STATE/calls, and the instance really runs, in the
# network namespace $NETNS, with procd's rules for a second start: an
# unchanged instance is left alone, one whose files changed gets its
# reload_signal when it has one, and anything else is restarted.

procd_record() {
	echo "$*" >>"$PROCD_STATE/calls"
}

procd_open_instance() {
	procd_record open_instance
	: >"$PROCD_STATE/new.params"
}

procd_set_param() {
	procd_record set_param "$@"
	echo "$*" >>"$PROCD_STATE/new.params"
}

procd_param() {
	sed -n "s/^$1 //p" "$PROCD_STATE/$2.params"
}

procd_running() {
	[ -f "$PROCD_STATE/pid" ] && kill -0 "$(cat "$PROCD_STATE/pid")" 2>/dev/null
}

procd_file_sums() {
	for file in $(procd_param file "$1"); do
		md5sum "$file"
	done
}

procd_close_instance() {
	procd_record close_instance
	procd_file_sums new >"$PROCD_STATE/new.sums"
	if procd_running; then
		if cmp -s "$PROCD_STATE/new.params" "$PROCD_STATE/run.params" &&
			cmp -s "$PROCD_STATE/new.sums" "$PROCD_STATE/run.sums"; then
			return
		fi
		signal=$(procd_param reload_signal new)
		if [ -n "$signal" ] && cmp -s "$PROCD_STATE/new.params" "$PROCD_STATE/run.params"; then
			procd_record signal "$signal"
			kill -"$signal" "$(cat "$PROCD_STATE/pid")"
			mv "$PROCD_STATE/new.sums" "$PROCD_STATE/run.sums"
			return
		fi
		procd_kill
	fi
	mv "$PROCD_STATE/new.params" "$PROCD_STATE/run.params"
	mv "$PROCD_STATE/new.sums" "$PROCD_STATE/run.sums"
	# shellcheck disable=SC2046  # the command line, split as procd does
	ip netns exec "$NETNS" $(procd_param command run) >>"$PROCD_STATE/log" 2>&1 &
	echo $! >"$PROCD_STATE/pid"
	procd_record started "$!"
}

procd_send_signal() {
	procd_record send_signal "$@"
	procd_running && kill -"$3" "$(cat "$PROCD_STATE/pid")"
}

procd_add_raw_trigger() {
	procd_record add_raw_trigger "$@"
}

procd_kill() {
	procd_record kill
	procd_running || return 0
	pid=$(cat "$PROCD_STATE/pid")
	kill -TERM "$pid"
	while kill -0 "$pid" 2>/dev/null; do
		sleep 0.05
	done
	rm -f "$PROCD_STATE/pid"
}
