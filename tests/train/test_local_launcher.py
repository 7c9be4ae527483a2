"""`polyvivid train --local --nproc N`: N ranks whose every socket is on loopback, one line per error,
and a launcher whose SIGTERM/SIGINT stops its workers instead of orphaning them."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from tests.conftest import free_port
from tests.sockets import ListenerWatch, process_tree
from tests.train.conftest import progress, rank0_metrics_past_step, training_manifest, wait_for, worker_env, write_spec


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_ranks_listen_on_loopback_and_a_signal_to_the_launcher_stops_them(synth_dataset, tmp_path, stop_signal):
    output, port = str(tmp_path / "run"), free_port()
    spec = write_spec(tmp_path / "spec.yaml", training_manifest(
        synth_dataset, output, steps=(300, 0), low_res=0, parallelism="fsdp", checkpointInterval=1000,
        metricsPort=port))
    launcher = subprocess.Popen([sys.executable, "-m", "polyvivid.cli", "train", str(spec), "--local", "--nproc", "2"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=worker_env())

    with ListenerWatch(launcher.pid, interval_s=0.2) as listeners:
        wait_for(lambda: rank0_metrics_past_step(port, 2), 120, "rank 0's metrics past step 2")  # both ranks are in the process group now
        workers = process_tree(launcher.pid)[1:]
    # the launcher's store, each rank's gloo pairs, rank 0's metrics: all on loopback
    assert port in {listener.port for listener in listeners.seen}
    assert len({listener.pid for listener in listeners.seen}) == 3, listeners.seen
    assert listeners.not_loopback() == []

    launcher.send_signal(stop_signal)
    log = launcher.communicate(timeout=180)[0]
    assert launcher.returncode == 143, log[-2000:]
    state = progress(output)
    assert state["status"] == "preempted" and 2 <= state["step"] < 300
    alive = [pid for pid in workers if _running(pid)]
    assert alive == [], f"workers left running: {alive}"


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_worker_error_is_printed_once_and_exits_2(synth_dataset, tmp_path):
    spec = write_spec(tmp_path / "spec.yaml", training_manifest(synth_dataset, str(tmp_path / "run"),
                                                                globalBatchSize=3))
    result = subprocess.run([sys.executable, "-m", "polyvivid.cli", "train", str(spec), "--local", "--nproc", "2"],
                            capture_output=True, text=True, env=worker_env(), timeout=300)
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("polyvivid: error:")]
    assert errors == ["polyvivid: error: globalBatchSize 3 is not a multiple of the world size 2 "
                      "(nodes x processes per node)"], result.stderr[-2000:]
    assert "Traceback" not in result.stderr
