#!/usr/bin/env python3
"""A world of your own in plain Python (no Gymnasium, no numpy), served to autodidact over the
JSON-lines env protocol (envs/PROTOCOL.md).

The world: a walker on a line of cells 0..10 starts in the middle and must reach cell 10.
Observation [position / 10, steps / 50]; actions Discrete(2): 0 left, 1 right. Reward +1 at
the goal (terminated), -0.01 per step otherwise. Seeds pick the start cell.

    autodidact:  make("exec:python3 envs/examples/python_env.py")
    over TCP:    python3 envs/examples/python_env.py --tcp 5555   then  make("tcp:127.0.0.1:5555")

To plug in your own world, replace the three functions reset/step/spaces below.
"""
import json
import random
import socket
import sys

N = 10


class Walker:
    observation_space = {"type": "Box", "low": [0.0, 0.0], "high": [1.0, None], "shape": [2]}
    action_space = {"type": "Discrete", "n": 2}

    def __init__(self):
        self.rng = random.Random()
        self.pos = self.steps = 0

    def reset(self, seed):
        if seed is not None:
            self.rng.seed(seed)
        self.pos, self.steps = self.rng.randint(3, 7), 0
        return [self.pos / N, 0.0], {}

    def step(self, action):
        if action not in (0, 1):
            raise ValueError(f"action {action!r} not in Discrete(2)")
        self.pos = max(0, min(N, self.pos + (1 if action == 1 else -1)))
        self.steps += 1
        done = self.pos == N
        return [self.pos / N, self.steps / 50], (1.0 if done else -0.01), done, False, {"pos": self.pos}


def serve(readline, write):
    """One session: answer each request line with one response line."""
    world = Walker()
    for line in iter(readline, b""):
        msg = json.loads(line)
        op = msg.get("op")
        if op == "hello":
            resp = {"type": "hello", "protocol": 1, "name": "walker",
                    "observation_space": world.observation_space, "action_space": world.action_space}
        elif op == "reset":
            obs, info = world.reset(msg.get("seed"))
            resp = {"type": "reset", "obs": obs, "info": info}
        elif op == "step":
            try:
                obs, r, term, trunc, info = world.step(msg["action"])
                resp = {"type": "step", "obs": obs, "reward": r, "terminated": term,
                        "truncated": trunc, "info": info}
            except ValueError as e:
                resp = {"type": "error", "message": str(e)}
        elif op == "close":
            write((json.dumps({"type": "closed"}) + "\n").encode())
            return
        else:
            resp = {"type": "error", "message": f"unknown op {op!r}"}
        write((json.dumps(resp) + "\n").encode())


def main():
    if "--tcp" in sys.argv:
        port = int(sys.argv[sys.argv.index("--tcp") + 1])
        srv = socket.create_server(("127.0.0.1", port))
        print("LISTENING %s:%d" % srv.getsockname()[:2], flush=True)
        while True:
            conn, _ = srv.accept()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            rf = conn.makefile("rb")
            try:
                serve(rf.readline, conn.sendall)
            except (BrokenPipeError, ConnectionResetError):
                pass
            conn.close()
    else:
        out = sys.stdout.buffer

        def write(b):
            out.write(b)
            out.flush()

        serve(sys.stdin.buffer.readline, write)


if __name__ == "__main__":
    main()
