"""kombu's filesystem transport (``filesystem://``, the broker of ``make demo``) with
messages that appear whole.

kombu writes a message by opening ``<time>_<uuid>.<queue>.msg`` and then writing it, and
a consumer takes any such file by renaming it away: one that polls between the two
reads an empty file, and the worker stops on a JSONDecodeError with that message lost
(kombu #1551). Here the message is written under a name no consumer matches and renamed
into place, which is atomic on one filesystem, so a consumer sees all of it or nothing.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps

TRANSPORT = "pyworkflow.celery.filesystem:Transport"
PARTIAL_SUFFIX = ".part"  # consumers take only names ending in ".<queue>.msg"


class Channel(filesystem.Channel):  # type: ignore[misc]  # kombu has no type hints
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        partial = final + PARTIAL_SUFFIX
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.remove(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):  # type: ignore[misc]
    Channel = Channel
