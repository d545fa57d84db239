"""Helpers of the serving tests: tiny exported models and a live ``megagpt/serve.py`` process."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]


def tiny_model(cfg_seed: int, tokenizer: Path, out: Path, n_positions: int = 128, attention: str = "dense") -> Path:
    from megagpt.config import model_config
    from megagpt.formats.weights import save_export
    from megagpt.model import GPT, full_state_dict

    torch.manual_seed(cfg_seed)
    extra = {"local_window": 16} if attention == "alternating" else {}
    cfg = model_config("tiny", vocab_size=400, n_positions=n_positions, attention=attention,
                       embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0, **extra)
    model = GPT(cfg)
    with torch.no_grad():  # larger weights than the init: peaked next-token distributions, no near-ties
        for p in model.parameters():
            p.mul_(4.0)
    return save_export(full_state_dict(model), cfg, out, tokenizer=str(tokenizer), run_name=out.stem)


class Server:
    def __init__(self, cmd: list, env=None, timeout: float = 120.0):
        self.log = []
        # a session of its own: stop() signals the whole group, as Ctrl-C does (the deepspeed launcher
        # passes no signal on to its ranks on one node)
        self.proc = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, cwd=ROOT, env={**os.environ, **(env or {})}, start_new_session=True)
        deadline = time.time() + timeout
        self.url = None
        while time.time() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.log.append(line)
            m = re.search(r"listening on (http://\S+)", line)
            if m:
                self.url = m.group(1)
                break
        if self.url is None:
            self.stop()
            raise RuntimeError("the server did not start:\n" + "".join(self.log))

    def stop(self) -> str:
        def signal_group(sig):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                pass
        signal_group(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            signal_group(signal.SIGKILL)
            self.proc.wait(30)
        signal_group(signal.SIGKILL)  # whatever of the group outlived its launcher
        rest = self.proc.stdout.read() if self.proc.stdout else ""
        return "".join(self.log) + (rest or "")


def start_server(*args, launcher=None, env=None) -> Server:
    cmd = (launcher or [sys.executable]) + [ROOT / "megagpt" / "serve.py", "--port", "0", *args]
    return Server(cmd, env=env)
