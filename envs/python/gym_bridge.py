#!/usr/bin/env python3
"""Serves a Gymnasium environment over autodidact's JSON-lines env protocol, version 1.

See envs/PROTOCOL.md. The runtime starts this script as a child process and speaks over its
stdin/stdout (`gym:<GymID>` in autodidact), or connects over TCP when started with --tcp.

    python3 gym_bridge.py --env CartPole-v1                 # stdin/stdout
    python3 gym_bridge.py --env CartPole-v1 --tcp 5555      # TCP on 127.0.0.1:5555

Supports Discrete, Box and MultiDiscrete spaces. Anything the env prints goes to stderr, so it
can never corrupt the protocol stream.
"""
import argparse
import json
import os
import select
import socket
import sys
import time

PROTOCOL = 1


def _bounds(arr):
    import numpy as np

    flat = np.asarray(arr, dtype=np.float64).ravel()
    return [float(x) if np.isfinite(x) else None for x in flat]


def space_json(space):
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    if isinstance(space, spaces.Box):
        return {
            "type": "Box",
            "low": _bounds(space.low),
            "high": _bounds(space.high),
            "shape": [int(d) for d in space.shape],
        }
    if isinstance(space, spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": [int(n) for n in space.nvec.ravel()]}
    raise ValueError(f"unsupported space {space!r} (Discrete, Box, MultiDiscrete only)")


def action_decoder(space):
    import numpy as np
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        start, n, kind = int(space.start), int(space.n), space.dtype.type
        # Hand the env numpy scalars, as action_space.sample() does: Gymnasium's checks are
        # markedly slower on Python ints. Small spaces use a table of ready-made scalars.
        table = [kind(start + i) for i in range(n)] if n <= 4096 else None

        def decode(a):
            a = int(a)
            if table is not None and 0 <= a < n:
                return table[a]
            return kind(a + start)

        return decode
    if isinstance(space, spaces.Box):
        dtype, shape = space.dtype, space.shape
        return lambda a: np.asarray(a, dtype=dtype).reshape(shape)
    if isinstance(space, spaces.MultiDiscrete):
        shape = space.nvec.shape
        return lambda a: np.asarray(a, dtype=np.int64).reshape(shape)
    raise ValueError(f"unsupported action space {space!r}")


def obs_encoder(space):
    from gymnasium import spaces

    if isinstance(space, spaces.Discrete):
        return lambda o: "[%d]" % int(o)
    import numpy as np

    # printf formatting is the cheapest way to JSON numbers in Python (json.dumps and float
    # repr run a shortest-digits search per number). 9 significant digits round-trip any
    # float32 exactly, 17 any float64. A NaN prints as `nan`, which the runtime rejects.
    digits = "%.9g" if np.dtype(space.dtype) == np.float32 else "%.17g"
    formats = {}

    def encode(o):
        flat = o.ravel().tolist() if hasattr(o, "ravel") else [o]
        fmt = formats.get(len(flat))
        if fmt is None:
            fmt = formats[len(flat)] = "[" + ",".join([digits] * len(flat)) + "]"
        return fmt % tuple(flat)

    return encode


def jsonable(x):
    """Best-effort conversion of an info value: arrays to lists, unknown objects to str."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if isinstance(x, (bool, int, float, str)) or x is None:
        return x
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def spinning_reader(fd, spin_s):
    """readline() over a raw fd that busy-polls for up to spin_s before blocking.

    A step round trip is two process wake-ups; spinning briefly while the runtime computes its
    next action removes this side's wake-up latency, which dominates the bridge's cost. After
    spin_s of silence it blocks in select(), so an idle bridge uses no CPU. Spinning stops
    while it does not pay off (the last request came later than spin_s) and is retried every
    64 requests: on an oversubscribed machine a spinner steals the core its peer needs.
    """
    os.set_blocking(fd, False)
    buf = bytearray()
    read, now, yield_cpu = os.read, time.perf_counter, os.sched_yield
    state = {"off": False, "since": 0}

    def readline():
        while True:
            i = buf.find(b"\n")
            if i >= 0:
                line = bytes(buf[: i + 1])
                del buf[: i + 1]
                return line
            window = spin_s
            if state["off"]:
                state["since"] += 1
                if state["since"] < 64:
                    window = 0.0
                else:
                    state["since"] = 0
            start = now()
            deadline = start + window
            while True:
                try:
                    chunk = read(fd, 65536)
                    break
                except BlockingIOError:
                    if now() > deadline:
                        select.select([fd], [], [])
                    else:
                        yield_cpu()
            if window > 0.0 or state["off"]:
                state["off"] = now() - start > spin_s
            if not chunk:
                return b""
            buf.extend(chunk)

    return readline


def serve(make_env, name, readline, write, flush):
    """Answers requests until `close` or end of input. Returns normally in both cases."""
    env = None
    decode_action = encode_obs = None
    loads, dumps = json.loads, json.dumps
    # The runtime writes discrete steps exactly like this; parse them without json.loads.
    step_prefix = b'{"op":"step","action":'
    cut = len(step_prefix)

    def send(s):
        write(s.encode())
        flush()

    def error(msg):
        send(dumps({"type": "error", "message": msg}) + "\n")

    while True:
        line = readline()
        if not line:
            break
        try:
            if line.startswith(step_prefix) and line.endswith(b"}\n") and line[cut:-2].isdigit():
                msg = {"action": int(line[cut:-2])}
                op = "step"
            else:
                msg = loads(line)
                op = msg["op"]
        except Exception as e:  # noqa: BLE001 - any bad request is reported, not fatal
            error(f"bad request: {e}")
            continue
        try:
            if op == "step":
                if env is None:
                    error("step before hello")
                    continue
                obs, r, term, trunc, info = env.step(decode_action(msg["action"]))
                send(
                    '{"type":"step","obs":%s,"reward":%s,"terminated":%s,"truncated":%s,"info":%s}\n'
                    % (
                        encode_obs(obs),
                        repr(float(r)),
                        "true" if term else "false",
                        "true" if trunc else "false",
                        dumps(jsonable(info)) if info else "{}",
                    )
                )
            elif op == "reset":
                if env is None:
                    error("reset before hello")
                    continue
                obs, info = env.reset(seed=msg.get("seed"))
                send(
                    '{"type":"reset","obs":%s,"info":%s}\n'
                    % (encode_obs(obs), dumps(jsonable(info)) if info else "{}")
                )
            elif op == "hello":
                if msg.get("protocol") != PROTOCOL:
                    error(f"protocol {msg.get('protocol')} not supported; this peer speaks {PROTOCOL}")
                    continue
                if env is None:
                    env = make_env()
                    decode_action = action_decoder(env.action_space)
                    encode_obs = obs_encoder(env.observation_space)
                send(
                    dumps(
                        {
                            "type": "hello",
                            "protocol": PROTOCOL,
                            "observation_space": space_json(env.observation_space),
                            "action_space": space_json(env.action_space),
                            "name": name,
                        }
                    )
                    + "\n"
                )
            elif op == "close":
                if env is not None:
                    env.close()
                send('{"type":"closed"}\n')
                return
            else:
                error(f"unknown op {op!r}")
        except Exception as e:  # noqa: BLE001 - the runtime gets a typed `error` answer
            error(f"{type(e).__name__}: {e}")
    if env is not None:
        env.close()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--env", required=True, help="Gymnasium id, e.g. CartPole-v1")
    p.add_argument("--tcp", type=int, default=None, help="serve on this TCP port (0: any free)")
    p.add_argument("--host", default="127.0.0.1", help="TCP bind address (default loopback)")
    p.add_argument("--once", action="store_true", help="TCP: exit after one connection")
    # Off by default: on a shared, oversubscribed machine spinning measured ~15% slower.
    p.add_argument("--spin-us", type=float, default=0.0,
                   help="busy-poll stdin this long before blocking (0: block at once)")
    args = p.parse_args()

    import gymnasium as gym

    # The env is built lazily on `hello` so a bad id becomes an `error` answer; the passive
    # env checker is skipped because the runtime validates every message itself.
    def make_env():
        return gym.make(args.env, disable_env_checker=True)

    if args.tcp is None:
        # Keep the real stdout for the protocol and point fd 1 at stderr, so prints from the
        # env (Python or C) cannot interleave with protocol lines.
        proto = os.fdopen(os.dup(1), "wb", buffering=65536)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        if args.spin_us > 0:
            readline = spinning_reader(sys.stdin.fileno(), args.spin_us * 1e-6)
        else:
            readline = sys.stdin.buffer.readline
        serve(make_env, args.env, readline, proto.write, proto.flush)
        return

    srv = socket.create_server((args.host, args.tcp))
    host, port = srv.getsockname()[:2]
    print(f"LISTENING {host}:{port}", flush=True)
    while True:
        conn, _ = srv.accept()
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        rf, wf = conn.makefile("rb"), conn.makefile("wb")
        try:
            serve(make_env, args.env, rf.readline, wf.write, wf.flush)
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            rf.close()
            wf.close()
            conn.close()
        if args.once:
            break


if __name__ == "__main__":
    main()
