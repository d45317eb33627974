#!/usr/bin/env python3
"""Splits a `perf record` profile of Prosody into what its CPU went to, per chat message.

    perf script -i PERF.DATA -F ip,sym,dso | benches/prosody/perf_split.py MESSAGES HZ

MESSAGES: the chat messages the profiled Prosody handled; HZ: perf record's -F. Each sample is
charged to a category by its innermost frame: Lua's collector (lgc.c), the VM (lvm.c, ldo.c,
lapi.c and the other interpreter files), tables (ltable.c, table.*), strings (lstring.c,
lstrlib.c, concatenation, table.concat, memcpy and friends), allocation (malloc and free), expat
and lxp (parsing), and the kernel, by the system call the sample is under. The Lua symbols need
an interpreter with its symbols (docs/performance.md, "Prosody's CPU with readtrack, C and Lua":
Debian's lua5.4 is stripped, and its internal functions are hidden). Prints a Markdown row per
category (microseconds per message) and the samples no category took.
"""

import collections
import re
import sys

LUA_CORE = "lua5.4"

GC = re.compile(
    r"^(luaC_|sweep|propagate|reallymark|traverse|atomic|singlestep|freeobj|mark|clearby|"
    r"clearkey|youngcollection|genstep|incstep|fullinc|entersweep|GCTM|udata2finalize|"
    r"separatetobefnz|checkSizes|remarkupvals|convergeephemerons|restartcollection|"
    r"correctgraylist|linkgclist|whitelist|getgclist|markbeingfnz|luaE_setdebt|luaF_freeproto|"
    r"luaH_free|luaS_remove|luaE_freethread|luaF_close|dothecall|callallpendingfinalizers)"
)
ALLOC = re.compile(
    r"^(l_alloc|luaM_|malloc|free|realloc|cfree|_int_malloc|_int_free|_int_realloc|"
    r"malloc_consolidate|unlink_chunk|__libc_malloc|__libc_free|__libc_realloc|tcache|"
    r"__GI___libc_malloc|__GI___libc_free|__GI___libc_realloc|sysmalloc|inlined)"
)
STRINGS = re.compile(
    r"^(luaS_|internshrstr|createstrobj|luaV_concat|copy2buff|tconcat|addfield|luaL_addvalue|"
    r"luaL_addlstring|luaL_pushresult|luaL_buffinit|prepbuffsize|luaL_prepbuffsize|newbox|"
    r"resizebox|boxgc|str_|match|max_expand|singlematch|classend|lmemfind|do_match|"
    r"start_capture|end_capture|push_onecapture|push_captures|add_value|add_s|"
    r"luaO_pushvfstring|luaO_pushfstring|tostringbuff|luaO_tostring|luaO_tostr|luaL_tolstring|"
    r"lua_concat|luaO_str2num|l_str2d|l_str2int|lua_stringtonumber|l_strcmp|addquoted|"
    r"luaL_gsub)"
)
LIBC_STRINGS = re.compile(r"(memcpy|memmove|memcmp|memchr|memrchr|strlen|strchr|strcmp|strcoll)")
TABLES = re.compile(
    r"^(luaH_|getgeneric|mainposition|rehash|numusearray|numusehash|computesizes|"
    r"setnodevector|findindex|hash_search|reinsert|exchangehashpart|insertionsort|auxsort|sort|"
    r"partition|tinsert|tremove|countint|getfreepos|unbound_search|luaV_finishset|"
    r"luaV_finishget|lua_rawget|lua_rawset|lua_rawgeti|lua_rawseti|lua_next|luaB_next|"
    r"ipairsaux|luaB_ipairs|luaB_pairs)"
)
SYSCALL = re.compile(r"__(?:x64|se|do)_sys_(\w+)")
SYSCALL_NAMES = {"sendto": "send", "write": "send", "writev": "send", "recvfrom": "recv",
                 "read": "recv", "epoll_ctl": "epoll_ctl", "epoll_wait": "epoll_wait"}

ORDER = ["GC", "Lua VM", "tables", "strings", "allocation", "expat (parse)", "kernel: send",
         "kernel: recv", "kernel: epoll_ctl", "kernel: epoll_wait", "kernel: other syscalls",
         "kernel: faults, interrupts", "other"]


def category(frames):
    sym, dso = frames[0]
    if dso.startswith("[kernel"):
        for s, d in frames:
            if d.startswith("[kernel"):
                m = SYSCALL.match(s)
                if m:
                    return "kernel: " + SYSCALL_NAMES.get(m.group(1), "other syscalls")
        return "kernel: faults, interrupts"
    if "libexpat" in dso or "expat" in dso or "lxp" in dso:
        return "expat (parse)"
    for name, pattern in (("GC", GC), ("allocation", ALLOC), ("strings", STRINGS), ("tables", TABLES)):
        if pattern.match(sym):
            return name
    if LIBC_STRINGS.search(sym):
        return "strings"
    # perf names a frame inlined into another by its function and the dso "inlined".
    if LUA_CORE in dso or dso == "inlined":
        return "Lua VM"
    return "other"


def main():
    messages, hz = int(sys.argv[1]), float(sys.argv[2])
    counts, unplaced, total = collections.Counter(), collections.Counter(), 0
    frames = []

    def flush():
        nonlocal total
        if not frames:
            return
        total += 1
        c = category(frames)
        counts[c] += 1
        if c == "other" or (c == "Lua VM" and frames[0][0].startswith("[")):
            unplaced[frames[0]] += 1
        frames.clear()

    for line in sys.stdin:
        if not line.strip() or not line.startswith((" ", "\t")):
            flush()
            continue
        m = re.match(r"\s+[0-9a-f]+\s+(.*?)\s+\((.*)\)\s*$", line.rstrip("\n"))
        if m:
            frames.append((re.sub(r"\+0x[0-9a-f]+$", "", m.group(1)), m.group(2)))
    flush()
    us = 1e6 / hz / messages
    print(f"{total} samples, {total * us:.1f} µs per message")
    for c in ORDER:
        print(f"| {c} | {counts[c] * us:.1f} | {100 * counts[c] / max(total, 1):.1f}% |")
    for (sym, dso), n in unplaced.most_common(5):
        print(f"  unplaced: {n} {sym} {dso}")


if __name__ == "__main__":
    main()
