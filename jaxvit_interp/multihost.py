"""One run over several processes: starting JAX's distributed runtime, who writes, waiting.

Every process of a distributed run executes the same program on the same inputs; the devices of
all of them form one mesh (:func:`~jaxvit_interp.parallel.all_devices_mesh`) and every sharded
result comes back to every process. Files are written by process 0 alone (:func:`is_writer`);
the others wait for it at a barrier where they need what it wrote.

:func:`initialize` takes the coordinator address, the process count and this process's id from
its arguments, else from ``JAX_COORDINATOR_ADDRESS``, ``JAX_NUM_PROCESSES`` and
``JAX_PROCESS_ID``; with none of them JAX detects a cluster itself (SLURM, Cloud TPU, Open MPI).
"""

from __future__ import annotations

import itertools
import json
import os

import jax

from jaxvit_interp.errors import InputError

__all__ = [
    "ENVIRONMENT",
    "barrier",
    "broadcast_message",
    "initialize",
    "is_distributed",
    "is_writer",
    "peer_failure",
    "run_on_writer",
    "share_from_writer",
]

# Where each setting of initialize() is read from when the caller does not give it.
ENVIRONMENT = {
    "coordinator": "JAX_COORDINATOR_ADDRESS",
    "num_processes": "JAX_NUM_PROCESSES",
    "process_id": "JAX_PROCESS_ID",
}


def _setting(name: str, value, least: int | None):
    if value is None:
        value = os.environ.get(ENVIRONMENT[name]) or None
        source = ENVIRONMENT[name]
    else:
        source = f"--{name.replace('_', '-')}"
    if value is None or least is None:
        return value
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise InputError(f"{source} must be a whole number, got {value!r}") from None
    if number < least:
        raise InputError(f"{source} must be at least {least}, got {number}")
    return number


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Start JAX's distributed runtime; call it before anything else uses JAX.

    Each setting not given is read from its environment variable (:data:`ENVIRONMENT`); when none
    is set anywhere, ``jax.distributed.initialize()`` is called without arguments and detects a
    SLURM job, a Cloud TPU pod slice or an Open MPI launch itself.

    Raises:
      InputError: a setting is malformed, or the runtime could not start (the message says why
        and which settings were used).
    """
    coordinator = _setting("coordinator", coordinator, None)
    num_processes = _setting("num_processes", num_processes, 1)
    process_id = _setting("process_id", process_id, 0)
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise InputError(
            f"process id {process_id} is not below the process count {num_processes} (ids "
            "count from 0)"
        )
    # Processes on CPUs exchange results over TCP through gloo; the backend reads the option
    # when it starts, so it is set before JAX creates any device.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    given = {
        "coordinator_address": coordinator,
        "num_processes": num_processes,
        "process_id": process_id,
    }
    given = {key: value for key, value in given.items() if value is not None}
    try:
        jax.distributed.initialize(**given)
    except (ValueError, RuntimeError, TypeError) as err:
        used = ", ".join(f"{k}={v}" for k, v in given.items()) or "none (cluster auto-detection)"
        names = ", ".join(ENVIRONMENT.values())
        raise InputError(
            f"JAX's distributed runtime did not start: {str(err).strip().splitlines()[0]}\n"
            f"settings given: {used}; give --coordinator, --num-processes and --process-id, or "
            f"set {names}, unless the cluster (SLURM, Cloud TPU) provides them"
        ) from None


def is_distributed() -> bool:
    """Whether this process is one of several."""
    return jax.process_count() > 1


def is_writer() -> bool:
    """Whether this process writes the run's files: process 0 (the only one on a single host)."""
    return jax.process_index() == 0


# How long a process waits for the others at a barrier or for a message of the writer: long
# enough for the writer's own stages (projection, clustering, writing the bundle) at scale. A
# process that stops is noticed sooner: the coordination service misses its heartbeats.
WAIT_SECONDS = 6 * 3600

# Barriers and messages are numbered in the order the processes reach them (the same order in
# every process: they run the same program), so that each has a name of its own.
_counter = itertools.count()


def _client():
    from jax._src import distributed

    return distributed.global_state.client


def barrier(name: str) -> None:
    """Wait until every process gets here (nothing to wait for in a single process).

    Through JAX's coordination service, not a device collective: a wait of minutes (the writer
    alone projecting or writing) is not cut short by the collectives' own timeouts.
    """
    if is_distributed():
        _client().wait_at_barrier(f"jaxvit_interp/{next(_counter)}/{name}", WAIT_SECONDS * 1000)


def broadcast_message(message: str | None) -> str | None:
    """The writer's ``message`` (None: nothing to say) on every process; a barrier too."""
    if not is_distributed():
        return message
    key = f"jaxvit_interp/message/{next(_counter)}"
    client = _client()
    if is_writer():
        # "1" + text, or "0": a message may be empty.
        client.key_value_set(key, "0" if message is None else "1" + message)
    else:
        value = client.blocking_key_value_get(key, WAIT_SECONDS * 1000)
        message = value[1:] if value.startswith("1") else None
    barrier("message")
    return message


def share_from_writer(fn, what: str):
    """``fn()`` run on the writer alone, its result (JSON-able) returned on every process.

    The others wait for it. When it fails, the writer raises its error as it was and every
    other process an :class:`InputError` that carries its message, naming ``what`` it was doing.
    """
    result, failure, message = None, None, None
    if is_writer():
        try:
            result = fn()
            message = "ok " + json.dumps(result)
        except Exception as err:  # told to the others, then raised here as it was
            failure, message = err, "err " + (str(err) or type(err).__name__)
    message = broadcast_message(message)
    if failure is not None:
        raise failure
    if message.startswith("err "):
        raise InputError(f"process 0 could not {what}: {message[4:]}")
    return result if is_writer() else json.loads(message[3:])


def run_on_writer(fn, what: str):
    """``fn()`` on the writer; its result there and None elsewhere, once it has finished.

    The others wait for it; when it fails, every process raises (see :func:`share_from_writer`).
    """
    held = []
    share_from_writer(lambda: held.append(fn()), what)
    return held[0] if held else None


# What a collective says when the process at the other end has gone: gloo over TCP on CPUs,
# NCCL on GPUs, and the coordination service on every platform.
_PEER_LOST = (
    "Connection reset by peer",
    "Connection closed by peer",
    "Connection refused",
    "Broken pipe",
    "Gloo",
    "NCCL",
    "heartbeat",
    "coordination service",
    "UNAVAILABLE",
)


def peer_failure(err: BaseException) -> bool:
    """Whether ``err`` is how a collective fails when another process has stopped."""
    text = f"{type(err).__name__}: {err}"
    return any(needle in text for needle in _PEER_LOST)
