"""Following a job's output files: NDJSON chunks, live while the job runs, bounded in memory, time and bytes.

The files are the job user's, so they are opened as anything a user controls is (``O_NOFOLLOW``,
``O_NONBLOCK``, regular files only: a FIFO or a symlink at the path is an error, never a wait). They are
read in a worker thread, at most ``BATCH`` bytes per hop, so a 200 GB sparse file costs that thread and
never the event loop: other requests run between hops. That the job ended comes from its job events (a
``FollowedJob``), not from asking anyone: a wait for new bytes ends early when the job does. The files
themselves are still read every ``POLL_SECONDS`` while idle: the writer is a user's process, on Slurm on
another node over a shared file system, which tells nobody (no inotify across NFS) when it appends. A stream
reads at most its budget (``jobs.output_stream_max_bytes``), then ends with one error line. When the client
goes, Starlette cancels the stream and the generator's ``finally`` closes the files.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field

import anyio.to_thread
from anyio import CapacityLimiter

from openworkbench.errors import InvalidState, OutputTooLarge, PathMissing, UnsafePath
from openworkbench.safefs import paths
from openworkbench.services.job_events import FollowedJob

CHUNK = 64 * 1024  # the most one NDJSON line carries
BATCH = 16 * CHUNK  # the most one thread hop reads
POLL_SECONDS = 0.02  # a follower sees a new line within this (plus one read)
DEFAULT_BUDGET = 1 << 30
READER_THREADS = 8  # of the 40 worker threads: streams never take those of the store-bound calls (get_session)
_readers: list[CapacityLimiter] = []  # made on first use: a limiter belongs to the running event loop


def _limiter() -> CapacityLimiter:
    if not _readers:
        _readers.append(CapacityLimiter(READER_THREADS))
    return _readers[0]


@dataclass
class _Stream:
    kind: str  # "stdout" | "stderr"
    path: str
    fd: int | None = None
    offset: int = 0
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    def open(self) -> bool:
        """Open the file if it exists yet; refuse anything but a regular file, without ever blocking. Its
        directory is the server's (the Local job dir, or the 0711 one in a Slurm output_dir): trusted."""
        try:
            self.fd = paths.open_file(self.path, os.path.dirname(self.path))
        except PathMissing:
            return False  # not created yet: the job has not started
        except UnsafePath as exc:
            raise InvalidState(f"the job's {self.kind} file is not streamed: {exc.message}") from None
        return True

    def read(self, job_id: str, limit: int) -> tuple[list[bytes], int]:
        """NDJSON lines of at most ``limit`` new bytes, and how many bytes were read."""
        if self.fd is None and not self.open():
            return [], 0
        assert self.fd is not None
        lines: list[bytes] = []
        total = 0
        while total < limit:
            want = min(CHUNK, limit - total)
            data = os.read(self.fd, want)
            total += len(data)
            if text := self.decoder.decode(data):
                lines.append(line(job_id, self.kind, text))
            if len(data) < want:
                break  # caught up with the writer
        self.offset += total
        return lines, total

    def unread(self) -> bool:
        """Whether the file holds bytes not read yet."""
        return self.fd is not None and os.fstat(self.fd).st_size > self.offset

    def flush(self, job_id: str) -> list[bytes]:
        rest = self.decoder.decode(b"", final=True)
        return [line(job_id, self.kind, rest)] if rest else []

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def line(job_id: str, kind: str, text: str) -> bytes:
    return json.dumps({"jobId": job_id, "outputType": kind, "output": text}).encode() + b"\n"


Pass = tuple[list[bytes], int, bool, Exception | None]


def _read_pass(streams: list[_Stream], job_id: str, limit: int) -> Pass:
    """One thread hop: up to ``limit`` bytes, stdout first; whether any file has more to read now; and the
    error that stopped the pass, if one did (what was read before it is still sent, before the error)."""
    lines: list[bytes] = []
    total = 0
    try:
        for stream in streams:
            got, count = stream.read(job_id, limit - total)
            lines += got
            total += count
        return lines, total, any(stream.unread() for stream in streams), None
    except (InvalidState, OSError) as exc:
        return lines, total, False, exc


async def follow(job_id: str, files: list[tuple[str, str]], job: FollowedJob,
                 budget: int = DEFAULT_BUDGET) -> AsyncGenerator[bytes, None]:
    """Yield NDJSON lines of the job's output until it has ended and every byte was sent, or the budget is
    spent (then OutputTooLarge, which the caller turns into the stream's last line). ``job`` is closed here."""
    streams = [_Stream(kind, path) for kind, path in files if path]
    left = budget
    try:
        while True:
            # Ask before reading: when the job is over, the passes from here on read all it ever wrote.
            still_running = not (await job.refresh()).final  # in memory: the events queued since
            # Not cancellable mid-read (anyio waits for the thread), so ``finally`` never closes an fd in use.
            lines, count, more, error = await anyio.to_thread.run_sync(
                _read_pass, streams, job_id, min(BATCH, left), limiter=_limiter())
            left -= count
            for item in lines:
                yield item
            if error is not None:
                raise error
            if more and left <= 0:
                raise OutputTooLarge(
                    f"the job's output is larger than this server streams in one get_job_output call "
                    f"(jobs.output_stream_max_bytes = {budget} bytes); the first {budget} bytes were sent")
            if more:
                continue
            if not still_running:
                for stream in streams:
                    for item in stream.flush(job_id):
                        yield item
                break
            if not lines:
                with contextlib.suppress(TimeoutError):  # new bytes are looked for then; an end cuts it short
                    await job.change(timeout=POLL_SECONDS)
    finally:
        job.close()
        for stream in streams:
            stream.close()
