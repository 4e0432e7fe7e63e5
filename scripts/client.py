#!/usr/bin/env python3
"""A dependency-free client for opossumd (protocol v1, docs/PROTOCOL.md): stdlib socket + json only.

    from client import Client
    with Client("./opossum.sock") as c:
        print(c.hello())
        c.append([{"type": "StudentRegistered", "data": {"name": "Ada"},
                   "tags": [{"key": "studentId", "value": "42"}]}])
        for event in c.read({"items": [{"tags": [{"key": "studentId", "value": "42"}]}]}):
            print(event["position"], event["type"], event["data"])
        c.projection_put("StudentShortInfo", "42", {"Name": "Ada"}, tags={"EnrollmentTier": "Basic"})
        for item in c.projection_query("StudentShortInfo", {"enrollmenttier": "basic"}):
            print(item["key"], item["state"], item["metadata"]["version"])

    from client import subscribe
    for event in subscribe("./opossum.sock", {"items": [{"types": ["StudentRegistered"]}]}, after=0):
        print(event["position"], event["data"])   # the catch-up, then each new event as it commits

As a script it is an interactive client: type (or pipe) request lines, one JSON object per line, and every answer
line is printed; "id" is filled in when a line has none:

    python3 scripts/client.py --socket ./opossum.sock
    > {"op":"hello"}
    {"id":1,"ok":true,"server":"opossumd",...}

`--demo` instead runs a short example that writes a few events and a projection into the store it is pointed at.
"""

import argparse
import json
import socket
import sys
import time
import uuid


class OpossumError(Exception):
    """An error line from the server: .code is e.g. 'append_condition_failed', 'invalid_request'."""

    def __init__(self, code, message):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class Client:
    def __init__(self, path="./opossum.sock", timeout=None):
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.settimeout(timeout)
        self._sock.connect(path)
        self._file = self._sock.makefile("rb", buffering=1 << 16)
        self._next_id = 1

    def close(self):
        self._file.close()
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _send(self, op, **fields):
        request_id = self._next_id
        self._next_id += 1
        body = {"id": request_id, "op": op}
        body.update({k: v for k, v in fields.items() if v is not None})
        self._sock.sendall(json.dumps(body, separators=(",", ":")).encode() + b"\n")
        return request_id

    def _recv(self):
        line = self._file.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        return json.loads(line)

    def _final(self, request_id):
        reply = self._recv()
        if reply.get("id") != request_id and reply.get("id") is not None:
            raise RuntimeError(f"answer for id {reply.get('id')} while waiting for {request_id}")
        if not reply.get("ok"):
            err = reply.get("error", {})
            raise OpossumError(err.get("code", "unknown"), err.get("message", ""))
        return reply

    def raw(self, request):
        """Sends one request (a dict; "id" is filled in when absent) and yields every answer line as a dict, the
        final line (the one with "ok") last."""
        if "id" not in request:
            request = {"id": self._next_id, **request}
            self._next_id += 1
        self._sock.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\n")
        while True:
            line = self._recv()
            yield line
            if "ok" in line:
                return

    def call(self, op, **fields):
        """Any op that answers with one final line; returns that line as a dict."""
        return self._final(self._send(op, **fields))

    def hello(self):
        return self.call("hello")

    def head(self):
        return self.call("head")["head"]

    def stats(self):
        return self.call("stats")

    def append(self, events, fail_if_events_match=None, after=None, tracking=None):
        """Appends events atomically. With fail_if_events_match (a query), fails with
        OpossumError(code='append_condition_failed') if a matching event exists after `after`.

        tracking=(source, position) commits a consumer checkpoint with the events (journal mode): fails with
        OpossumError(code='tracking_conflict') unless position is above the source's last one (tracking_get).
        Events may carry "id": a UUID string (new_event_id()); an exact retry of an append whose answer was lost
        then returns the first attempt's positions, with "replayed": True (docs/PROTOCOL.md, "Exactly-once
        consumers")."""
        condition = None
        if fail_if_events_match is not None:
            condition = {"fail_if_events_match": fail_if_events_match, "after": after}
        if tracking is not None:
            source, position = tracking
            tracking = {"source": source, "position": position}
        return self.call("append", events=events, condition=condition, tracking=tracking)

    def tracking_get(self, source):
        """The last position an append tracked for `source` (0 when none has)."""
        return self.call("tracking.get", source=source)["position"]

    def read(self, query="all", after=None, before=None, limit=None, backwards=None):
        """Yields events in position order (newest first when backwards). Consume it to the end."""
        request_id = self._send("read", query=query, after=after, before=before, limit=limit, backwards=backwards)
        while True:
            line = self._recv()
            if "event" in line:
                yield line["event"]
                continue
            if not line.get("ok"):
                err = line.get("error", {})
                raise OpossumError(err.get("code", "unknown"), err.get("message", ""))
            if line.get("id") != request_id:
                raise RuntimeError("out of step with the server")
            return

    # Projections (docs/PROTOCOL.md, "Projections"). Tags may be given as a dict {key: value} or a list of
    # {"key","value"} objects.

    @staticmethod
    def _tags(tags):
        if tags is None:
            return None
        if isinstance(tags, dict):
            return [{"key": k, "value": v} for k, v in tags.items()]
        return list(tags)

    def projection_put(self, projection, key, state, tags=None, expected_version=None):
        """Writes one projection; returns its new version. With expected_version (0: must not exist), raises
        OpossumError(code='version_conflict') when the key's current version differs."""
        return self.call("projection.put", projection=projection, key=key, state=state, tags=self._tags(tags),
                         expected_version=expected_version)["version"]

    def projection_put_many(self, puts):
        """puts: dicts with projection, key, state and optional tags / expected_version. Returns the versions."""
        puts = [{k: (self._tags(v) if k == "tags" else v) for k, v in p.items() if v is not None} for p in puts]
        return self.call("projection.put_many", puts=puts)["versions"]

    def projection_get(self, projection, key):
        """{key, state, metadata, tags} or None when the key does not exist."""
        try:
            reply = self.call("projection.get", projection=projection, key=key)
        except OpossumError as e:
            if e.code == "not_found":
                return None
            raise
        return {k: reply[k] for k in ("key", "state", "metadata", "tags") if k in reply}

    def projection_delete(self, projection, key):
        return self.call("projection.delete", projection=projection, key=key)["deleted"]

    def _items(self, op, **fields):
        request_id = self._send(op, **fields)
        while True:
            line = self._recv()
            if "item" in line:
                yield line["item"]
                continue
            if not line.get("ok"):
                err = line.get("error", {})
                raise OpossumError(err.get("code", "unknown"), err.get("message", ""))
            if line.get("id") != request_id:
                raise RuntimeError("out of step with the server")
            return

    def projection_get_all(self, projection):
        """Yields every projection of `projection`, by key. Consume it to the end."""
        return self._items("projection.get_all", projection=projection)

    def projection_query(self, projection, tags):
        """Yields the projections carrying all of `tags` (case-insensitive), by key. Consume it to the end."""
        return self._items("projection.query", projection=projection, tags=self._tags(tags))

    def projection_list(self):
        return self.call("projection.list")["projections"]

    def projection_checkpoint(self, projection):
        return self.call("projection.checkpoint", projection=projection)["position"]

    def projection_set_checkpoint(self, projection, position):
        self.call("projection.checkpoint", projection=projection, position=position)


def new_event_id():
    """A fresh event id for idempotent appends (a random UUID)."""
    return str(uuid.uuid4())


def subscribe(path="./opossum.sock", query="all", after=0, heartbeats=False, reconnect_for=30.0):
    """Yields every event matching `query` with a position above `after`, then each new one as it commits, on a
    connection of its own, until the generator is closed. When the connection breaks or the daemon restarts it
    reconnects (for up to `reconnect_for` seconds) and resumes after the last event it yielded: every event once,
    in order. With heartbeats=True it also yields {"heartbeat": True, "head": H} whenever the daemon reports that
    everything through H was delivered (after a quiet second)."""
    lost = None
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            lost = lost or time.monotonic()
            if time.monotonic() - lost > reconnect_for:
                raise
            time.sleep(0.1)
            continue
        lost = None
        with sock, sock.makefile("rb") as lines:
            request = {"id": "subscribe", "op": "subscribe", "query": query, "after": after}
            sock.sendall(json.dumps(request, separators=(",", ":")).encode() + b"\n")
            for line in lines:
                message = json.loads(line)
                if "event" in message:
                    after = message["event"]["position"]
                    yield message["event"]
                elif message.get("heartbeat"):
                    if heartbeats:
                        yield {"heartbeat": True, "head": message["head"]}
                elif message.get("ok"):
                    after = max(after, message["last"])  # the daemon is stopping: resume after `last`
                    break
                else:
                    err = message.get("error", {})
                    if err.get("code") != "shutting_down":
                        raise OpossumError(err.get("code", "unknown"), err.get("message", ""))
                    break
        lost = time.monotonic()
        time.sleep(0.1)


def example(path):
    with Client(path, timeout=30) as c:
        hello = c.hello()
        print(f"connected to {hello['server']} {hello['version']} (io: {hello['io_backend']}), head {hello['head']}")
        email = f"ada-{uuid.uuid4().hex[:8]}@example.com"
        unique = {"items": [{"types": ["UserRegistered"], "tags": [{"key": "email", "value": email}]}]}
        event = {"type": "UserRegistered", "data": {"name": "Ada"}, "tags": [{"key": "email", "value": email}]}
        first = c.append([event], fail_if_events_match=unique)
        print(f"registered {email} at position {first['first']}")
        try:
            c.append([event], fail_if_events_match=unique)
            print("BUG: a duplicate registration was accepted")
            return 1
        except OpossumError as e:
            assert e.code == "append_condition_failed", e
            print(f"second registration: condition failed as expected ({e.code})")
        c.append([{"type": "UserRenamed", "data": "Ada L.", "tags": [{"key": "email", "value": email}]}])
        history = list(c.read({"items": [{"tags": [{"key": "email", "value": email}]}]}))
        for e in history:
            print(f"  {e['position']:>6} {e['type']:<16} {json.dumps(e['data'])}")
        newest = list(c.read("all", backwards=True, limit=1))
        print(f"newest event: {newest[0]['type']} at {newest[0]['position']}; head {c.head()}")
        # A read model: one projection per user, found again by a tag in any letter case.
        version = c.projection_put("Users", email, {"Name": "Ada L."}, tags={"Tier": "Basic"})
        try:
            c.projection_put("Users", email, {"Name": "stale"}, expected_version=version + 1)
            print("BUG: a stale projection write was accepted")
            return 1
        except OpossumError as e:
            assert e.code == "version_conflict", e
        found = [item["key"] for item in c.projection_query("Users", {"tier": "BASIC"})]
        assert email in found, found
        print(f"projection Users/{email}: version {version}, {len(found)} Basic users; "
              f"projections: {c.projection_list()}")
    return 0


def interactive(path):
    """Request lines from stdin, answers to stdout, until end of input."""
    prompt = sys.stdin.isatty()
    if prompt:
        print(f'connected to {path}: type a request per line, e.g. {{"op":"hello"}} (Ctrl-D to quit)', file=sys.stderr)
    with Client(path) as c:
        while True:
            if prompt:
                print("> ", end="", file=sys.stderr, flush=True)
            line = sys.stdin.readline()
            if not line:
                return 0
            if not line.strip():
                continue
            try:
                request = json.loads(line)
            except json.JSONDecodeError as e:
                print(f"not JSON: {e}", file=sys.stderr)
                continue
            if not isinstance(request, dict):
                print("a request is a JSON object", file=sys.stderr)
                continue
            for answer in c.raw(request):
                print(json.dumps(answer, separators=(",", ":")), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", default="./opossum.sock", help="the daemon's socket (default ./opossum.sock)")
    parser.add_argument("--demo", action="store_true",
                        help="run a short example that WRITES events and a projection into the store")
    args = parser.parse_args()
    try:
        return example(args.socket) if args.demo else interactive(args.socket)
    except (FileNotFoundError, ConnectionRefusedError) as e:
        print(f"cannot connect to {args.socket}: {e.strerror}; is opossumd running on {args.socket}? (--socket)",
              file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
