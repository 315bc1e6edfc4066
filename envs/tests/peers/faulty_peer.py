#!/usr/bin/env python3
"""A protocol peer that misbehaves on purpose, for the fault tests (no Gymnasium needed).

The world: obs = [steps_taken, 0.5], Discrete(2) actions, reward 1 per step, never ends.
--fault picks what goes wrong at step number --after (1-based); faults:
  none, crash (exit mid-episode), hang (stop answering), garbage (malformed JSON),
  nan (NaN in obs), shape (wrong obs length), unknown (unknown message type), error
  (an `error` answer), longline (a line with no end), version (wrong protocol in hello),
  hang-hello (never answers hello), dead-after-first (first launch crashes at --after,
  every later launch exits at once; needs --launches).
--launches FILE appends one line per process start, so tests can count restarts.
--grandchild FILE starts a long-lived helper process (`sleep`) and writes its pid to FILE, so
tests can check that it dies with the peer.
"""
import argparse
import os
import sys
import time

p = argparse.ArgumentParser()
p.add_argument("--fault", default="none")
p.add_argument("--after", type=int, default=3)
p.add_argument("--launches", default=None)
p.add_argument("--grandchild", default=None)
args = p.parse_args()

if args.grandchild:
    import subprocess

    helper = subprocess.Popen(["sleep", "600"])
    with open(args.grandchild + ".tmp", "w") as f:
        f.write(str(helper.pid))
    os.replace(args.grandchild + ".tmp", args.grandchild)

launch = 0
if args.launches:
    try:
        with open(args.launches) as f:
            launch = sum(1 for _ in f)
    except FileNotFoundError:
        pass
    with open(args.launches, "a") as f:
        f.write("start\n")
    if args.fault == "dead-after-first" and launch > 0:
        sys.exit(3)

out = sys.stdout


def send(s):
    out.write(s + "\n")
    out.flush()


t = 0
for line in sys.stdin:
    line = line.strip()
    if '"hello"' in line:
        if args.fault == "hang-hello":
            time.sleep(3600)
        proto = 99 if args.fault == "version" else 1
        send('{"type":"hello","protocol":%d,"name":"faulty",'
             '"observation_space":{"type":"Box","low":[0,0],"high":[null,1],"shape":[2]},'
             '"action_space":{"type":"Discrete","n":2}}' % proto)
    elif '"reset"' in line:
        t = 0
        send('{"type":"reset","obs":[0.0,0.5],"info":{"launch":%d}}' % launch)
    elif '"step"' in line:
        t += 1
        if t == args.after:
            f = args.fault
            if f in ("crash", "dead-after-first"):
                sys.exit(1)
            if f == "hang":
                time.sleep(3600)
            if f == "garbage":
                send('{"type":"step","obs":[1.0,0.5],"rew')
                continue
            if f == "nan":
                send('{"type":"step","obs":[NaN,0.5],"reward":1.0,"terminated":false,"truncated":false}')
                continue
            if f == "shape":
                send('{"type":"step","obs":[1.0,0.5,9.0],"reward":1.0,"terminated":false,"truncated":false}')
                continue
            if f == "unknown":
                send('{"type":"teleport","to":[1,2]}')
                continue
            if f == "error":
                send('{"type":"error","message":"simulator refused the action"}')
                continue
            if f == "longline":
                out.write("x" * 300000)
                out.flush()
                time.sleep(3600)
        send('{"type":"step","obs":[%d.0,0.5],"reward":1.0,"terminated":false,"truncated":false,"info":{}}' % t)
    elif '"close"' in line:
        send('{"type":"closed"}')
        break
    else:
        send('{"type":"error","message":"unknown op"}')
