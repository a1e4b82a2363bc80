"""Two processes of one distributed run on 127.0.0.1 (CPU devices, gloo collectives), started
as docs/scale.md says: the same command in each, with the coordinator's address,
the process count and each one's id in JAX's environment variables, or with only the variables
SLURM's ``srun`` gives each task, from which JAX finds the rest itself."""

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from clitools import cli, command

from jaxvit_interp.bundle import load_bundle
from jaxvit_interp.patterns import normalize_patterns, restore_autoencoder
from jaxvit_interp.pipeline.analyze import CHUNK_DIR
from jaxvit_interp.storage import load_npz

# Arrays computed the same way in every process but summed in a different order across devices.
RTOL, ATOL = 1e-5, 1e-6
# A process whose peer was killed must be out within this many seconds.
EXIT_SECONDS = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# JAX's SLURM detection puts the coordinator on the job's first node, at a port it derives
# from the job id: SLURM_PORT_BASE + job id % SLURM_PORTS.
SLURM_PORT_BASE, SLURM_PORTS = 65536 - 2**12, 2**12


def free_slurm_job_id() -> int:
    """A job id whose derived coordinator port is free on this machine now."""
    for job in np.random.default_rng().permutation(SLURM_PORTS):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", SLURM_PORT_BASE + int(job)))
            except OSError:
                continue
        return 10 * SLURM_PORTS + int(job)
    raise RuntimeError("no free port for the coordinator in SLURM's range")


# Variables that tell a process where it is in a run; the test's own are never inherited.
LAUNCH = ("JAX_COORDINATOR_ADDRESS", "JAX_COORDINATOR_PORT", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def launch_env(process_id: int, rendezvous: int, cluster: str) -> dict[str, str]:
    """What a process of the run is told: JAX's variables (``cluster="jax"``, ``rendezvous`` is
    the coordinator's port), or those ``srun --ntasks=2`` sets on one node (``cluster="slurm"``,
    ``rendezvous`` is the job id, from which JAX derives the port)."""
    if cluster == "jax":
        return {
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{rendezvous}",
            "JAX_NUM_PROCESSES": "2",
            "JAX_PROCESS_ID": str(process_id),
        }
    return {
        "SLURM_JOB_ID": str(rendezvous),
        "SLURM_STEP_NODELIST": "localhost",
        "SLURM_STEP_NUM_NODES": "1",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": str(process_id),
        "SLURM_LOCALID": str(process_id),
    }


def start(
    args, process_id: int, rendezvous: int, host_devices: int = 1, cluster: str = "jax"
) -> subprocess.Popen:
    env = {
        **{k: v for k, v in os.environ.items() if k not in LAUNCH and not k.startswith("SLURM_")},
        "PYTHONUNBUFFERED": "1",
        **launch_env(process_id, rendezvous, cluster),
    }
    env.pop("JAXVIT_DEBUG", None)
    if host_devices > 1:  # CPU devices per process, as a host with several accelerators has
        flags = env.get("XLA_FLAGS", "")
        env["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={host_devices}"
    return subprocess.Popen(
        [*command(), *map(str, args), "--distributed"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def run_two(
    args, timeout=1800, host_devices: int = 1, cluster: str = "jax"
) -> list[tuple[int, str]]:
    rendezvous = free_port() if cluster == "jax" else free_slurm_job_id()
    procs = [start(args, i, rendezvous, host_devices, cluster) for i in range(2)]
    return [(p.wait(timeout), p.communicate()[1]) for p in procs]


# The pattern arrays drawn from the 2-D projection: UMAP's optimisation turns the float32
# rounding in which the autoencoders of one and two processes differ into visibly different maps,
# so for these the projection's inputs (each pattern's latent) are compared instead.
PROJECTED = ("positions", "positions_mean", "density", "extent")


def assert_same_run(one: Path, two: Path, devices: int = 2) -> None:
    a, b = load_bundle(one), load_bundle(two)
    assert b.meta["devices"]["count"] == devices
    assert set(a.parts) == set(b.parts)
    for part, arrays in a.parts.items():
        assert set(arrays) == set(b.parts[part]), part
        for name, value in arrays.items():
            if part == "patterns" and name.split("_", 1)[1] in PROJECTED:
                assert b[part][name].shape == value.shape and np.isfinite(b[part][name]).all()
                continue
            np.testing.assert_allclose(
                b[part][name], value, rtol=RTOL, atol=ATOL, err_msg=f"{part}/{name}"
            )
    chunks = sorted((one / CHUNK_DIR).iterdir())
    assert [c.name for c in chunks] == sorted(c.name for c in (two / CHUNK_DIR).iterdir())
    merged = {}
    for chunk in chunks:
        x, y = load_npz(chunk), load_npz(two / CHUNK_DIR / chunk.name)
        assert set(x) == set(y)
        for name, value in x.items():
            np.testing.assert_allclose(y[name], value, rtol=RTOL, atol=ATOL, err_msg=name)
            merged.setdefault(name, []).append(value)
    num_patches = a.meta["config"]["image_size"][0] // a.meta["config"]["patch_size"][0]
    for kind in ("cls", "patch"):
        patterns = normalize_patterns(np.concatenate(merged[f"{kind}_pattern"]), num_patches**2)
        latents = [
            restore_autoencoder(run / f"autoencoder-{kind}").encode(patterns) for run in (one, two)
        ]
        # Trained data-parallel over two processes: the same model to float32 rounding.
        np.testing.assert_allclose(latents[1], latents[0], rtol=1e-4, atol=1e-5, err_msg=kind)


def test_two_processes_survive_a_killed_peer_and_resume_on_two_devices_each_to_one_process_result(
    reference_run, tmp_path
):
    # The one-process result is the shared single-device run of the same command.
    # Kill process 1 once the first chunk of images is written: process 0 must notice and stop.
    args = reference_run.args(tmp_path / "two")
    port = free_port()
    procs = [start(args, i, port) for i in range(2)]
    first = tmp_path / "two" / CHUNK_DIR / "chunk-00000.npz"
    deadline = time.monotonic() + 1800
    while not first.exists() and procs[0].poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.exists(), procs[0].communicate()[1]
    procs[1].send_signal(signal.SIGKILL)
    killed_at = time.monotonic()
    status = procs[0].wait(EXIT_SECONDS)
    waited = time.monotonic() - killed_at
    err = procs[0].communicate()[1]
    procs[1].wait()
    assert status == 2, err
    assert "another process of this distributed run stopped" in err, err
    assert "Traceback" not in err, err
    assert waited < EXIT_SECONDS

    # The same command again in both processes resumes from the chunks kept, now started as
    # srun starts a job's tasks and with two host devices in each: the remaining chunks are
    # sharded over four devices of two processes, and the autoencoders train data-parallel over
    # all four.
    for status, err in run_two(args, host_devices=2, cluster="slurm"):
        assert status == 0, err
    assert_same_run(reference_run.run, tmp_path / "two", devices=4)


@pytest.mark.parametrize(
    ("env", "kwargs", "needle"),
    [
        ({"JAX_NUM_PROCESSES": "two"}, {}, "JAX_NUM_PROCESSES must be a whole number, got 'two'"),
        ({"JAX_NUM_PROCESSES": "0"}, {}, "JAX_NUM_PROCESSES must be at least 1, got 0"),
        ({"JAX_PROCESS_ID": "2"}, {"num_processes": 2}, "process id 2 is not below"),
        ({}, {"process_id": -1}, "--process-id must be at least 0, got -1"),
    ],
)
def test_bad_distributed_settings_are_named(monkeypatch, env, kwargs, needle):
    from jaxvit_interp.errors import InputError
    from jaxvit_interp.multihost import ENVIRONMENT, initialize

    for name in ENVIRONMENT.values():
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(InputError, match=needle):
        initialize(**kwargs)


def test_process_settings_need_distributed(reference_run, tmp_path):
    args = reference_run.args(tmp_path / "r")
    result = cli(*args, "--process-id", "1")
    assert result.returncode == 2 and "--process-id given without --distributed" in result.stderr
    assert not (tmp_path / "r").exists()
