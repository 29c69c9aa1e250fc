"""Preemption and lost workers of a (multi-worker) training run: what train_ssd.py does when a worker
is told to stop (SIGTERM) and when one is gone (SIGKILL, a lost machine). docs/reliability.md.

- SIGTERM to any worker: TensorFlow's PreemptionCheckpointHandler on the run's own CheckpointManager
  (`make_preemption_handler`) saves on every worker at one step boundary, then the run exits with
  cli.EXIT_PREEMPTED (42); started again, it continues at that step and data position.
- A lost worker: the survivors' collectives fail once the coordination service's heartbeat times out;
  engine.training.run_step turns that into `WorkerLost`, one line naming the worker
  (`lost_worker_message`) and cli.EXIT_WORKER_LOST (43). A collective that hangs instead is caught by
  `Watchdog` (no step for --stall_timeout_s seconds).
"""

import os
import re
import sys
import threading
import time

import tensorflow as tf

from engine import cli


class WorkerLost(ConnectionError):
    """A peer of a multi-worker run is gone; cli.run ends the script with one line and this status."""
    exit_status = cli.EXIT_WORKER_LOST


_TASK = re.compile(r"/job:(\w+)/replica:\d+/task:(\d+)")
_CAUSE = re.compile(r"crash|heartbeat|unavailable|connect|socket|down|deadline|abort", re.IGNORECASE)


def lost_worker_message(error_message, cluster):
    """One line naming the lost worker: the task TensorFlow's error names (else the address it names,
    looked up in `cluster`, else "a peer"), and what to do."""
    lines = [line.strip() for line in error_message.splitlines() if line.strip()]
    # TF's first line is often "Graph execution error:"; the cause is named further down.
    telling = [line for line in lines if _CAUSE.search(line)]
    first = (telling or lines or ["collective failed"])[0]
    named = _TASK.search(error_message)
    if named:
        address = dict(enumerate(cluster.get(named.group(1), []))).get(int(named.group(2)), "")
        who = f"worker {named.group(1)}:{named.group(2)}" + (f" ({address})" if address else "")
    else:
        who = next((f"worker {job}:{i} ({a})" for job, addresses in cluster.items()
                    for i, a in enumerate(addresses) if a in error_message), "a peer worker")
    return (f"lost {who}: {first[:300]}; stopped without saving (exit {cli.EXIT_WORKER_LOST}): start every "
            f"worker again, the run resumes from the last complete checkpoint")


def cluster_of(strategy):
    """{job: [addresses]} of a multi-worker strategy; {} for one process."""
    resolver = getattr(strategy, "cluster_resolver", None)
    spec = resolver.cluster_spec().as_dict() if resolver is not None else {}
    return spec if sum(len(a) for a in spec.values()) > 1 else {}


class Watchdog:
    """The backstop for a hang: when no `beat` comes for `timeout_s` seconds, `on_stall(seconds, step)`
    runs on the watchdog's thread (train_ssd.py: one line, then os._exit with EXIT_WORKER_LOST; a
    collective that waits on a dead peer never returns to Python, so only another thread can stop it).
    Armed by the first `beat`, so the first step's tracing does not count. `poll_s` 0: no thread, the
    caller calls `check` (tests)."""

    def __init__(self, timeout_s, on_stall, clock=time.monotonic, poll_s=1.0):
        self.timeout_s = timeout_s
        self._on_stall = on_stall
        self._clock = clock
        self._poll_s = poll_s
        self._last = None   # (time, step) of the last beat
        self._stop = threading.Event()

    def beat(self, step):
        first = self._last is None
        self._last = (self._clock(), step)
        if first and self.timeout_s and self._poll_s:
            threading.Thread(target=self._watch, name="StallWatchdog", daemon=True).start()

    def check(self):
        """Calls on_stall and returns True when the last beat is older than timeout_s."""
        when, step = self._last
        if self._clock() - when < self.timeout_s:
            return False
        self._on_stall(self._clock() - when, step)
        return True

    def _watch(self):
        while not self._stop.wait(self._poll_s):
            if self.check():
                return

    def stop(self):
        self._stop.set()


def exit_after_stall(script, seconds, step):
    """Watchdog.on_stall of the scripts: the one line, then the process ends at once (no Python cleanup:
    the main thread is stuck inside TensorFlow)."""
    sys.stderr.write(f"{script}: error: no training step finished for {seconds:.0f} s after step {step}: a "
                     f"worker is lost or hung; stopped without saving (exit {cli.EXIT_WORKER_LOST}): start "
                     f"every worker again, the run resumes from the last complete checkpoint\n")
    sys.stderr.flush()
    os._exit(cli.EXIT_WORKER_LOST)


def make_preemption_handler(strategy, checkpoint, manager, before_exit):
    """tf.distribute.experimental.PreemptionCheckpointHandler on the run's own CheckpointManager.

    On SIGTERM to any worker every worker saves at the same step boundary (the caller calls
    `save_checkpoint_if_preempted(checkpoint_number=step)` after each step) and exits with
    cli.EXIT_PREEMPTED after `before_exit()`. Given a tf.train.Checkpoint instead of our manager the
    handler would build its own with max_to_keep=1, which would rotate away the run's checkpoints.

    The handler counts its calls in a `checkpointed_runs` variable that it adds to the checkpoint unless
    the checkpoint already has that attribute. Restored, that count would differ between the chief
    (whose manager reads --model_dir) and the other workers (whose manager writes a scratch folder), and
    the workers would disagree on the step to save at; a new variable in the checkpoint would also stop
    earlier checkpoints from restoring. The run's step is the optimizer's, restored on every worker
    alike, so the attribute is set to a plain 0 (not saved) and the handler counts from 0 in every
    process. Build it after the restore: it restores the latest checkpoint of its manager again.

    TensorFlow's limits: on a GCE CPU VM the handler does nothing (it says so); on a GCE GPU VM it
    polls the maintenance notice instead of SIGTERM.
    """
    if not hasattr(checkpoint, "checkpointed_runs"):
        checkpoint.checkpointed_runs = 0

    def exit_fn():
        before_exit()
        sys.exit(cli.EXIT_PREEMPTED)

    return tf.distribute.experimental.PreemptionCheckpointHandler(
        getattr(strategy, "cluster_resolver", None), manager,
        termination_config=tf.distribute.experimental.TerminationConfig(exit_fn=exit_fn))
