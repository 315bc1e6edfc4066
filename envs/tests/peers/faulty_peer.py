#!/usr/bin/env python3
"""A protocol peer that misbehaves on purpose, for the fault tests (no Gymnasium needed).

The world: obs = [steps_taken, 0.5], Discrete(2) actions, reward 1 per step, never ends.

Arguments:
  --fault KIND      what goes wrong (default none); KIND is one of
                      none
                      crash          exit mid-episode
                      hang           stop answering (sleeps --hang-s)
                      garbage        malformed JSON
                      nan            NaN in obs
                      shape          wrong obs length
                      unknown        unknown message type
                      error          an `error` answer (the session stays usable)
                      longline       a line with no end (then sleeps --hang-s)
                      hugereward     reward 1e300 (finite in JSON, overflows f32)
                      reset-error    an `error` answer to reset number --after
                      version        wrong protocol in hello
                      hang-hello     never answers hello
                      dead-after-first  first launch crashes at --after, every later launch
                                     exits at once while --dead-file exists (or always,
                                     without --dead-file); needs --launches
                      random         before every step, with probability --prob, one of
                                     --faults at random; the peer stays alive after every
                                     fault that allows it (all but crash; hang and longline
                                     sleep --hang-s, then go on)
  --after N         step number (1-based, counted per launch and reset) of the fault (default 3)
  --launches FILE   appends one line per process start, so tests can count restarts
  --dead-file FILE  see dead-after-first
  --grandchild FILE starts a long-lived helper process (`sleep`) and writes its pid to FILE,
                    so tests can check that it dies with the peer
  --seed S          random mode: seed; each launch draws from (S, launch number) where the
                    launch number comes from --launches, else from the process id (so
                    restarts differ but runs are reproducible only with --launches)
  --prob P          random mode: probability of a fault per step (default 0.02)
  --faults LIST     random mode: comma-separated kinds to draw from (default: crash, hang,
                    garbage, nan, shape, unknown, error, longline, hugereward)
  --hang-s S        how long hang and longline sleep (default 3600)
"""
import argparse
import os
import random
import sys
import time

STEP_FAULTS = ["crash", "hang", "garbage", "nan", "shape", "unknown", "error", "longline",
               "hugereward"]

p = argparse.ArgumentParser()
p.add_argument("--fault", default="none")
p.add_argument("--after", type=int, default=3)
p.add_argument("--launches", default=None)
p.add_argument("--dead-file", default=None)
p.add_argument("--grandchild", default=None)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--prob", type=float, default=0.02)
p.add_argument("--faults", default=",".join(STEP_FAULTS))
p.add_argument("--hang-s", type=float, default=3600.0)
args = p.parse_args()

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
        if args.dead_file is None or os.path.exists(args.dead_file):
            sys.exit(3)

if args.grandchild:
    import subprocess

    helper = subprocess.Popen(["sleep", "600"])
    with open(args.grandchild + ".tmp", "w") as f:
        f.write(str(helper.pid))
    os.replace(args.grandchild + ".tmp", args.grandchild)

rng = random.Random("%d:%d" % (args.seed, launch if args.launches else os.getpid()))
choices = [f for f in args.faults.split(",") if f]
for f in choices:
    if f not in STEP_FAULTS:
        sys.exit("unknown fault in --faults: %s" % f)

out = sys.stdout


def send(s):
    out.write(s + "\n")
    out.flush()


def step_line(t, reward="1.0"):
    return ('{"type":"step","obs":[%d.0,0.5],"reward":%s,"terminated":false,'
            '"truncated":false,"info":{}}' % (t, reward))


def inject(f, t):
    """Misbehaves as `f` at step t; returns True if the step was answered (or never will be)."""
    if f in ("crash", "dead-after-first"):
        sys.exit(1)
    if f == "hang":
        time.sleep(args.hang_s)
        return False
    if f == "garbage":
        send('{"type":"step","obs":[1.0,0.5],"rew')
    elif f == "nan":
        send('{"type":"step","obs":[NaN,0.5],"reward":1.0,"terminated":false,"truncated":false}')
    elif f == "shape":
        send('{"type":"step","obs":[1.0,0.5,9.0],"reward":1.0,"terminated":false,"truncated":false}')
    elif f == "unknown":
        send('{"type":"teleport","to":[1,2]}')
    elif f == "error":
        send('{"type":"error","message":"simulator refused the action"}')
    elif f == "longline":
        out.write("x" * 300000)
        out.flush()
        time.sleep(args.hang_s)
        send("")
    elif f == "hugereward":
        send(step_line(t, "1e300"))
    else:
        return False
    return True


t = 0
resets = 0
try:
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
            resets += 1
            if args.fault == "reset-error" and resets == args.after:
                send('{"type":"error","message":"simulator could not reset"}')
                continue
            send('{"type":"reset","obs":[0.0,0.5],"info":{"launch":%d}}' % launch)
        elif '"step"' in line:
            t += 1
            if args.fault == "random":
                if choices and rng.random() < args.prob and inject(rng.choice(choices), t):
                    continue
            elif t == args.after and inject(args.fault, t):
                continue
            send(step_line(t))
        elif '"close"' in line:
            send('{"type":"closed"}')
            break
        else:
            send('{"type":"error","message":"unknown op"}')
except BrokenPipeError:
    # The runtime went away (it kills or drops faulty peers): nothing left to do.
    pass
