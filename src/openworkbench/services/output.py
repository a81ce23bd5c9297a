"""Following a job's output files: NDJSON chunks, live while the job runs, bounded memory."""

from __future__ import annotations

import asyncio
import codecs
import json
import os
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

CHUNK = 64 * 1024
POLL_SECONDS = 0.02  # a follower sees a new line within this (plus one read)


@dataclass
class _Stream:
    kind: str  # "stdout" | "stderr"
    path: str
    fd: int | None = None
    decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))

    def read_chunks(self, final: bool = False) -> Iterator[str]:
        """What has been written since the last call, decoded, one chunk of at most CHUNK bytes at a time."""
        if self.fd is None:
            try:
                self.fd = os.open(self.path, os.O_RDONLY)
            except OSError:
                return  # not created yet: the job has not started
        while data := os.read(self.fd, CHUNK):
            if text := self.decoder.decode(data):
                yield text
            if len(data) < CHUNK:
                break
        if final and (rest := self.decoder.decode(b"", final=True)):
            yield rest

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def line(job_id: str, kind: str, text: str) -> bytes:
    return json.dumps({"jobId": job_id, "outputType": kind, "output": text}).encode() + b"\n"


async def follow(job_id: str, files: list[tuple[str, str]], active: Callable[[], bool]) -> AsyncIterator[bytes]:
    """Yield NDJSON lines of the job's output until it has ended and every byte was sent."""
    streams = [_Stream(kind, path) for kind, path in files if path]
    try:
        while True:
            # Ask before reading: when the job is over, this pass reads all it ever wrote.
            still_running = active()
            sent = False
            for stream in streams:
                for text in stream.read_chunks(final=not still_running):
                    sent = True
                    yield line(job_id, stream.kind, text)
            if not still_running:
                break
            if not sent:
                await asyncio.sleep(POLL_SECONDS)
    finally:
        for stream in streams:
            stream.close()
