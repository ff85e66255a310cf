"""A fake Kaggle API on 127.0.0.1 for the real `kaggle` client to talk to.

It speaks the wire protocol the client uses (JSON POSTs to /v1/<service>/<Rpc>, camelCase
fields, enum names as strings, errors as {"code", "message"}), keeps just enough state for the
submit and download flows (datasets with versions, blob uploads, kernels with versions,
submissions, competition files), records every call, and injects faults on demand.

Blob uploads follow the resumable-upload protocol of the URL Kaggle hands out (Google Cloud
Storage's): a PUT with `Content-Range: bytes a-b/total` adds one part (308 + `Range` until the
last), a PUT with `Content-Range: bytes */total` asks how much arrived, DELETE cancels the
upload. A "break" fault keeps half of a part and hangs up without an answer, as a dropped
connection does.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import count

LAST_MODIFIED = "Thu, 01 Jan 2015 00:00:00 GMT"
USER = "alice"
KEY = "k3y-alice-0123456789abcdef"  # a fake key: tests grep every output for it


@dataclass
class Call:
    rpc: str  # the RPC name, e.g. "CreateDataset"; "upload" for a blob PUT, "file" for a download GET
    body: dict
    user: str | None
    headers: dict = field(default_factory=dict)


@dataclass
class Fault:
    status: int | None = 500  # HTTP status, 0 to hang, -1 to truncate a file body, -2 to break an upload, None: none
    message: str = "injected fault"
    retry_after: str | None = None


class FakeKaggle:
    def __init__(self, username: str = USER, key: str = KEY):
        self.keys = {username: key}
        self.calls: list[Call] = []
        self.faults: dict[str, list[Fault]] = {}
        self.blobs: dict[str, dict] = {}
        self.datasets: dict[str, dict] = {}
        self.kernels: dict[str, dict] = {}
        self.submissions: list[dict] = []
        self.competitions: dict[str, dict[str, bytes]] = {}
        self.rules_accepted: set[str] = set()
        self.files: dict[str, tuple[str, bytes]] = {}
        self.dataset_polls = 1  # GetDatasetStatus answers "processing" this many times per version
        self.kernel_polls = 1  # GetKernelSessionStatus answers RUNNING this many times per version
        self.kernel_outcome: tuple[str, str | None] = ("COMPLETE", None)  # of the runs of versions pushed from now
        self.score_polls = 1  # ListSubmissions shows a new submission PENDING this many times
        self.public_score = "0.6123"
        self.score_error: str | None = None  # set: scoring runs end in ERROR with this errorDescription
        self.submissions_page_size = 20  # ListSubmissions answers at most this many per page
        self.release = threading.Event()  # set to let hanging calls go
        self._ids = count(1)
        self._lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    # -- test controls -------------------------------------------------------------------------

    def start(self) -> FakeKaggle:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()

    def fail(
        self,
        rpc: str,
        status: int,
        times: int = 1,
        message: str = "injected fault",
        retry_after: str | None = None,
        after: int = 0,
    ) -> None:
        """The next `times` calls of `rpc` (after `after` that go through) answer `status`."""
        queue = self.faults.setdefault(rpc, [])
        queue.extend(Fault(None) for _ in range(after))
        queue.extend(Fault(status, message, retry_after) for _ in range(times))

    def hang(self, rpc: str, times: int = 1) -> None:
        self.fail(rpc, 0, times)

    def truncate(self, times: int = 1) -> None:
        self.fail("file", -1, times)

    def break_upload(self, times: int = 1, after: int = 0) -> None:
        """Upload parts (after `after` good ones): half the bytes arrive, then the connection drops unanswered."""
        self.fail("upload", -2, times, after=after)

    def names(self) -> list[str]:
        return [c.rpc for c in self.calls]

    def bodies(self, rpc: str) -> list[dict]:
        return [c.body for c in self.calls if c.rpc == rpc]

    def add_dataset(self, ref: str, files: dict[str, bytes], private: bool = False) -> None:
        self.datasets[ref] = {
            "private": private,
            "title": ref,
            "description": "",
            "versions": [{"files": files, "notes": "", "polls": 0}],
        }

    # -- RPCs ---------------------------------------------------------------------------------

    def _owner_or_403(self, user: str | None, owner: str) -> None:
        if user != owner:
            raise _Reply(403, {"code": 403, "message": f"Permission denied: {user} is not {owner}"})

    def StartBlobUpload(self, body: dict, user: str | None) -> dict:
        token = f"blob-{next(self._ids)}"
        self.blobs[token] = {
            "name": body["name"],
            "length": body.get("contentLength", 0),
            "type": body.get("type"),
            "data": None,  # bytes once complete
            "received": b"",  # parts received so far
            "cancelled": False,
        }
        return {"token": token, "createUrl": f"{self.url}/upload/{token}"}

    def _take_files(self, files: list[dict]) -> dict[str, bytes]:
        taken = {}
        for f in files:
            blob = self.blobs.get(f.get("token", ""))
            if blob is None or blob["data"] is None or len(blob["data"]) != blob["length"]:
                raise _Reply(
                    400, {"code": 400, "message": f"upload token {f.get('token')!r} is not a completed upload"}
                )
            taken[blob["name"]] = blob["data"]
        return taken

    def CreateDataset(self, body: dict, user: str | None) -> dict:
        owner, slug = body.get("ownerSlug", ""), body.get("slug", "")
        self._owner_or_403(user, owner)
        ref = f"{owner}/{slug}"
        if ref in self.datasets:
            return {"status": "error", "error": f"The requested title is already in use by a dataset {ref}."}
        files = self._take_files(body.get("files", []))
        self.datasets[ref] = {
            "private": body.get("isPrivate", False),
            "title": body.get("title"),
            "license": body.get("licenseName"),
            "description": body.get("description", ""),
            "versions": [{"files": files, "notes": "Initial release", "polls": self.dataset_polls}],
        }
        return {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"}

    def CreateDatasetVersion(self, body: dict, user: str | None) -> dict:
        ref = f"{body.get('ownerSlug', '')}/{body.get('datasetSlug', '')}"
        if ref not in self.datasets:
            raise _Reply(404, {"code": 404, "message": f"Dataset {ref} not found"})
        self._owner_or_403(user, body.get("ownerSlug", ""))
        if self.datasets[ref]["versions"][-1]["polls"] > 0:  # Kaggle: no new version while one processes
            raise _Reply(403, {"code": 403, "message": f"Dataset {ref} has a version that is still processing"})
        request = body.get("body", {})
        files = self._take_files(request.get("files", []))
        if request.get("description"):
            self.datasets[ref]["description"] = request["description"]
        self.datasets[ref]["versions"].append(
            {"files": files, "notes": request.get("versionNotes", ""), "polls": self.dataset_polls}
        )
        return {"ref": ref, "url": f"https://www.kaggle.com/datasets/{ref}", "status": "ok"}

    def _dataset(self, body: dict, user: str | None) -> dict:
        ref = f"{body.get('ownerSlug', '')}/{body.get('datasetSlug', '')}"
        dataset = self.datasets.get(ref)
        if dataset is None or (dataset["private"] and user != body.get("ownerSlug")):
            raise _Reply(404, {"code": 404, "message": f"Dataset {ref} not found"})
        return dataset

    def GetDataset(self, body: dict, user: str | None) -> dict:
        dataset = self._dataset(body, user)
        ref = f"{body.get('ownerSlug', '')}/{body.get('datasetSlug', '')}"
        versions = [{"versionNumber": n, "versionNotes": v["notes"]} for n, v in enumerate(dataset["versions"], 1)]
        return {
            "ref": ref,
            "title": dataset["title"],
            "description": dataset.get("description", ""),
            "isPrivate": dataset["private"],
            "currentVersionNumber": len(versions),
            "versions": list(reversed(versions)),  # newest first, as kaggle.com lists them
        }

    def GetDatasetStatus(self, body: dict, user: str | None) -> dict:
        latest = self._dataset(body, user)["versions"][-1]
        if latest["polls"] > 0:
            latest["polls"] -= 1
            return {"status": "BLOBS_RECEIVED"}
        return {"status": "READY"}

    def SaveKernel(self, body: dict, user: str | None) -> dict:
        ref = body.get("slug", "")
        self._owner_or_403(user, ref.split("/")[0])
        missing = [d for d in body.get("datasetDataSources", []) if d not in self.datasets]
        if missing:
            return {"ref": "", "url": "", "invalidDatasetSources": missing}
        kernel = self.kernels.setdefault(ref, {"versions": []})
        kernel["versions"].append(body)
        kernel["polls"] = self.kernel_polls
        kernel["outcome"] = self.kernel_outcome  # how this version's run ends
        return {
            "ref": f"/code/{ref}",
            "url": f"https://www.kaggle.com/code/{ref}",
            "versionNumber": len(kernel["versions"]),
            "kernelId": 7,
        }

    def GetKernel(self, body: dict, user: str | None) -> dict:
        ref = f"{body.get('userName', '')}/{body.get('kernelSlug', '')}"
        kernel = self.kernels.get(ref)
        if kernel is None or user != body.get("userName"):  # the notebooks are private
            raise _Reply(404, {"code": 404, "message": f"Kernel {ref} not found"})
        latest = kernel["versions"][-1]
        return {
            "metadata": {
                "ref": ref,
                "slug": body.get("kernelSlug", ""),
                "title": latest.get("newTitle", ""),
                "currentVersionNumber": len(kernel["versions"]),
                "enableGpu": latest.get("enableGpu", False),
                "datasetDataSources": latest.get("datasetDataSources", []),
            },
            "blob": {"source": latest.get("text", ""), "language": "python", "kernelType": "notebook"},
        }

    def GetKernelSessionStatus(self, body: dict, user: str | None) -> dict:
        ref = f"{body.get('userName', '')}/{body.get('kernelSlug', '')}"
        kernel = self.kernels.get(ref)
        if kernel is None:
            raise _Reply(404, {"code": 404, "message": f"Kernel {ref} not found"})
        if kernel["polls"] > 0:
            kernel["polls"] -= 1
            return {"status": "RUNNING"}
        status, message = kernel.get("outcome", self.kernel_outcome)
        return {"status": status, **({"failureMessage": message} if message else {})}

    def _rules_or_403(self, competition: str) -> None:
        if competition not in self.rules_accepted:
            raise _Reply(
                403,
                {"code": 403, "message": "You must accept this competition's rules before you'll be able to submit."},
            )

    def CreateCodeSubmission(self, body: dict, user: str | None) -> dict:
        competition = body.get("competitionName", "")
        self._rules_or_403(competition)
        ref = f"{body.get('kernelOwner', '')}/{body.get('kernelSlug', '')}"
        versions = self.kernels.get(ref, {}).get("versions", [])
        if not 1 <= body.get("kernelVersion", 0) <= len(versions):
            raise _Reply(400, {"code": 400, "message": f"kernel {ref} has no version {body.get('kernelVersion')}"})
        submission = {
            "ref": 1000 + len(self.submissions),
            "date": "2024-05-01T12:00:00.000Z",
            "description": body.get("submissionDescription", ""),
            "fileName": body.get("fileName", ""),
            "status": "PENDING",
            "polls": self.score_polls,
            "competition": competition,
        }
        self.submissions.append(submission)
        return {"message": "Your submission was successfully saved", "ref": submission["ref"]}

    def ListSubmissions(self, body: dict, user: str | None) -> dict:
        competition = body.get("competitionName", "")
        self._rules_or_403(competition)
        out = []
        for s in reversed(self.submissions):
            if s["competition"] != competition:
                continue
            if s["status"] == "PENDING" and s["polls"] <= 0:
                if self.score_error is None:
                    s["status"], s["publicScore"] = "COMPLETE", self.public_score
                else:
                    s["status"], s["errorDescription"] = "ERROR", self.score_error
            s["polls"] -= 1
            out.append({k: v for k, v in s.items() if k not in ("polls", "competition")})
        size = min(body.get("pageSize") or 20, self.submissions_page_size)
        start = int(body.get("pageToken") or 0)
        page = out[start : start + size]
        return {"submissions": page, **({"nextPageToken": str(start + size)} if start + size < len(out) else {})}

    # -- downloads: the RPC redirects to a file URL, as Kaggle does -----------------------------

    def _serve(self, name: str, data: bytes) -> str:
        file_id = f"f{next(self._ids)}"
        self.files[file_id] = (name, data)
        raise _Reply(302, None, {"Location": f"{self.url}/files/{file_id}/{name}"})

    def DownloadDataset(self, body: dict, user: str | None) -> dict:
        files = self._dataset(body, user)["versions"][-1]["files"]
        name = body.get("fileName")
        if name:
            if name not in files:
                raise _Reply(404, {"code": 404, "message": f"File {name} not found"})
            self._serve(name, files[name])
        self._serve("archive.zip", _zip(files))

    def DownloadDataFiles(self, body: dict, user: str | None) -> dict:
        competition = body.get("competitionName", "")
        self._competition_or_404(competition)
        self._rules_or_403(competition)
        self._serve(f"{competition}.zip", _zip(self.competitions[competition]))

    def DownloadDataFile(self, body: dict, user: str | None) -> dict:
        competition = body.get("competitionName", "")
        self._competition_or_404(competition)
        self._rules_or_403(competition)
        name = body.get("fileName", "")
        if name not in self.competitions[competition]:
            raise _Reply(404, {"code": 404, "message": f"File {name} not found"})
        self._serve(name, self.competitions[competition][name])

    def _competition_or_404(self, competition: str) -> None:
        if competition not in self.competitions:
            raise _Reply(404, {"code": 404, "message": f"Competition {competition} not found"})


def _zip(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(files):
            zf.writestr(zipfile.ZipInfo(name, (2015, 1, 1, 0, 0, 0)), files[name])
    return buf.getvalue()


class _Reply(Exception):
    def __init__(self, status: int, body: dict | None, headers: dict | None = None):
        self.status, self.body, self.headers = status, body, headers or {}


class _Handler(BaseHTTPRequestHandler):
    """The fake's HTTP routes; `fake` is set per server by `_handler`."""

    fake: FakeKaggle

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization", "")
        if auth.startswith("Basic "):
            user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
            return user if self.fake.keys.get(user) == key else None
        return None

    def _send(self, status: int, body: dict | None, headers: dict | None = None, raw: bytes | None = None) -> None:
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else b"")
        self.send_response(status)
        self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def _fault(self, rpc: str) -> Fault | None:
        with self.fake._lock:
            queue = self.fake.faults.get(rpc)
            fault = queue.pop(0) if queue else None
        if fault is not None and fault.status is None:  # this call goes through
            return None
        if fault is not None and fault.status == 0:
            self.fake.release.wait(30)
            self.close_connection = True
        return fault

    def _reply_fault(self, fault: Fault) -> None:
        headers = {"Retry-After": fault.retry_after} if fault.retry_after else {}
        self._send(fault.status, {"code": fault.status, "message": fault.message}, headers)

    def do_POST(self) -> None:
        rpc = self.path.rsplit("/", 1)[-1]
        length = int(self.headers.get("Content-Length", 0))
        body = json.loads(self.rfile.read(length) or b"{}")
        user = self._user()
        with self.fake._lock:
            self.fake.calls.append(Call(rpc, body, user, dict(self.headers)))
        if not self.path.startswith("/v1/"):
            return self._send(404, {"code": 404, "message": f"no route {self.path}"})
        fault = self._fault(rpc)
        if fault is not None:
            return None if fault.status == 0 else self._reply_fault(fault)
        if user is None:
            return self._send(401, {"code": 401, "message": "Unauthenticated"})
        method = getattr(self.fake, rpc, None)
        if method is None:
            return self._send(404, {"code": 404, "message": f"unknown RPC {rpc}"})
        try:
            with self.fake._lock:
                result = method(body, user)
        except _Reply as reply:
            return self._send(reply.status, reply.body, reply.headers)
        self._send(200, result)

    def do_PUT(self) -> None:
        token = self.path.rsplit("/", 1)[-1]
        data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        content_range = self.headers.get("Content-Range", "")
        query = content_range.startswith("bytes */")
        rpc = "upload-query" if query else "upload"
        with self.fake._lock:
            self.fake.calls.append(
                Call(rpc, {"token": token, "bytes": len(data), "range": content_range}, None, dict(self.headers))
            )
        blob = self.fake.blobs.get(token)
        if blob is None or blob["cancelled"]:
            return self._send(404, {"code": 404, "message": "upload URL expired"})
        fault = self._fault(rpc)
        if fault is not None and fault.status == -2:
            return self._drop_part(blob, content_range, query, data)
        if fault is not None:
            return None if fault.status == 0 else self._reply_fault(fault)
        return self._take_part(blob, content_range, query, data)

    def _drop_part(self, blob: dict, content_range: str, query: bool, data: bytes) -> None:
        """Half the part arrives, then the line drops."""
        if content_range.startswith("bytes ") and not query:
            start = int(content_range[6:].split("-")[0])
            if start == len(blob["received"]):
                blob["received"] += data[: len(data) // 2]
        self.close_connection = True

    def _take_part(self, blob: dict, content_range: str, query: bool, data: bytes) -> None:
        """A whole file, one part, or a status query: 200 once the upload is complete, else 308 + Range."""
        if not content_range:  # a whole-file upload in one request
            blob["received"] = blob["data"] = data
            return self._send(200, {})
        spec, _, total = content_range[6:].partition("/")
        if int(total) != blob["length"]:
            return self._send(400, {"code": 400, "message": f"total {total} != announced {blob['length']}"})
        if not query:
            start, _, end = spec.partition("-")
            if int(start) != len(blob["received"]) or int(end) - int(start) + 1 != len(data):
                return self._send(
                    400, {"code": 400, "message": f"part {spec} does not follow byte {len(blob['received'])}"}
                )
            blob["received"] += data
        if len(blob["received"]) == blob["length"]:
            blob["data"] = blob["received"]
            return self._send(200, {})
        headers = {"Range": f"bytes=0-{len(blob['received']) - 1}"} if blob["received"] else {}
        return self._send(308, None, headers)

    def do_DELETE(self) -> None:
        token = self.path.rsplit("/", 1)[-1]
        with self.fake._lock:
            self.fake.calls.append(Call("upload-cancel", {"token": token}, None, dict(self.headers)))
        blob = self.fake.blobs.get(token)
        if blob is None:
            return self._send(404, {"code": 404, "message": "upload URL expired"})
        blob["cancelled"] = True
        self._send(499, None)

    def do_GET(self) -> None:
        parts = self.path.split("/")
        with self.fake._lock:
            self.fake.calls.append(Call("file", {"path": self.path}, None, dict(self.headers)))
        if len(parts) < 3 or parts[2] not in self.fake.files:
            return self._send(404, {"code": 404, "message": "no such file"})
        name, data = self.fake.files[parts[2]]
        etag = '"' + hashlib.md5(data).hexdigest() + '"'
        headers = {"ETag": etag, "Accept-Ranges": "bytes", "Last-Modified": LAST_MODIFIED}
        fault = self._fault("file")
        if fault is not None and fault.status == -1:  # promise everything, send half, hang up
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            for k, v in headers.items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return None
        if fault is not None:
            return None if fault.status == 0 else self._reply_fault(fault)
        wanted = self.headers.get("Range", "")
        if wanted.startswith("bytes=") and self.headers.get("If-Range", etag) == etag:
            start = int(wanted[6:].split("-")[0])
            headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            return self._send(206, None, headers, raw=data[start:])
        self._send(200, None, headers, raw=data)


def _handler(fake: FakeKaggle) -> type[BaseHTTPRequestHandler]:
    """The request handler class of one fake's server."""
    return type("Handler", (_Handler,), {"fake": fake})
