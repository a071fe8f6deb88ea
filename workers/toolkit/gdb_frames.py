"""Run INSIDE gdb (`gdb -batch -x gdb_frames.py BINARY CORE`), never imported: prints one JSON line of the
signal and every thread's frames, so coredump.analyze never parses gdb's human-oriented backtrace text."""

import json
import os

import gdb

MAX_FRAMES = int(os.environ.get("RUNBOOKD_GDB_MAX_FRAMES", "64"))
MARKER = "RUNBOOKD-GDB-JSON "


def frame_dict(frame):
    sal = frame.find_sal()
    pc = frame.pc()
    out = {"function": frame.name(), "file": sal.symtab.filename if sal.symtab else None,
           "line": sal.line or None, "pc": hex(pc), "library": gdb.solib_name(pc)}
    if frame.type() == gdb.SIGTRAMP_FRAME:
        out["function"], out["signal_handler"] = "<signal handler called>", True
    return out


def thread_frames(thread):
    thread.switch()
    frames: list[dict] = []
    try:
        frame = gdb.newest_frame()
    except gdb.error:
        return frames
    while frame is not None and len(frames) < MAX_FRAMES:
        frames.append(frame_dict(frame))
        try:
            frame = frame.older()
        except gdb.error:
            break
    return frames


def signal_number():
    try:
        return int(gdb.parse_and_eval("$_siginfo.si_signo"))
    except gdb.error:
        return None


inferior = gdb.selected_inferior()
crashed = gdb.selected_thread()
signo = signal_number()
threads = []
for thread in sorted(inferior.threads(), key=lambda t: t.num):
    threads.append({"num": thread.num, "lwp": thread.ptid[1], "name": thread.name,
                    "crashed": crashed is not None and thread.ptid == crashed.ptid, "frames": thread_frames(thread)})
print(MARKER + json.dumps({"signo": signo, "threads": threads}))
