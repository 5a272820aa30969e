"""Resumable HTTP download with a checksum check."""
import hashlib
import os
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from ..errors import FewshotError


def md5sum(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, dest: str | Path, md5: str | None = None, hint: str = "", progress: bool = True,
             timeout: float = 30) -> Path:
    """Fetch `url` to `dest`. A `.part` file left by an interrupted download is
    continued with an HTTP Range request; the finished file is checked against
    `md5` before it takes its final name."""
    dest = Path(dest)
    if dest.is_file() and (md5 is None or md5sum(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            resumed = have and response.status == 206
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length is not None else None
            with open(part, "ab" if resumed else "wb") as f, tqdm(
                    total=total, initial=have, unit="B", unit_scale=True, desc=dest.name,
                    disable=not progress, leave=False) as bar:
                got = 0
                while block := response.read(1 << 16):
                    f.write(block)
                    got += len(block)
                    bar.update(len(block))
            if length is not None and got < int(length):  # the connection dropped: keep the part
                raise FewshotError(f"download of {url} stopped after {have + got} of {total} bytes; "
                                   f"run the command again to resume. {hint}")
    except urllib.error.HTTPError as error:
        error.close()
        if error.code == 416 and have:  # the part is already complete
            pass
        else:
            raise FewshotError(f"cannot download {url}: HTTP {error.code} {error.reason}. {hint}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise FewshotError(f"cannot download {url} ({reason}); are you offline? {hint}") from None
    if md5 is not None:
        got = md5sum(part)
        if got != md5:
            part.unlink()
            raise FewshotError(f"download of {url} is corrupt (md5 {got}, expected {md5}); "
                               f"run the command again. {hint}")
    os.replace(part, dest)
    return dest
