#!/usr/bin/python3
"""The Breezy side of pefnos's vcs-bzr plugin (installed as vcs-bzr-helper.py).

Three ways to run it, each started by the plugin with argv only:

  helper.py serve                       a long-lived server speaking JSON lines:
                                        {"id":N,"op":...} in on stdin,
                                        {"id":N,"ok":true,"result":...} or
                                        {"id":N,"ok":false,"error":"..."} out on stdout
  helper.py pull PROXY PREFIX URL BRANCH...   brings branches into the proxy (one-shot;
                                        the plugin pulls through the server)
  helper.py export PROXY REVID          the revision's tree as a tar on stdout (one-shot)

Exports are one-shot processes (a stream of their own). The server answers
pulls from one thread pool and everything else (heads, commits, digests,
forget) from another, so that long first pulls never hold up a poll. Each
answer is written whole under a lock. A request's deadline runs from when a
thread takes it up; when one overruns, the server kills itself: the plugin
then fails what was pending and starts a fresh server on the next request.
Saving Python's start-up on every change is what keeps a bzr poll cheap.

It never prompts: the UI is silent, it has no terminal (its own session) and
its stdin is the protocol. Breezy's log goes to BRZ_LOG (the plugin sets
/dev/null), never to brz.log in $HOME.
"""

import collections
import concurrent.futures
import datetime
import faulthandler
import hashlib
import json
import os
import shutil
import stat
import sys
import tarfile
import threading
import time

os.environ.setdefault("BRZ_LOG", os.devnull)

import breezy  # noqa: E402
import breezy.bzr  # noqa: E402,F401  (registers the bzr formats)
from breezy import controldir, errors, osutils, transport, ui, urlutils  # noqa: E402
from breezy import tsort  # noqa: E402
from breezy.branch import Branch  # noqa: E402
from breezy.repository import Repository  # noqa: E402
from breezy.revision import NULL_REVISION  # noqa: E402

MAX_DEPTH = 8          # how deep a directory of branches is searched
MAX_ENTRIES = 20000    # how many directory entries a search may look at
WORKERS = 4
BLOB_CACHE_SIZE = 200000


class Failure(Exception):
    """An expected failure, with a message for the user."""


# --------------------------------------------------------------------------
# Locations


def location_url(location):
    """A URL for Breezy: local paths become file:// URLs (unicode escaped)."""
    if location.startswith("/"):
        return urlutils.local_path_to_url(location)
    return location


def join(url, relative):
    """url + '/' + a branch name given as plain (unescaped) text."""
    return urlutils.join(url, urlutils.escape(relative))


def describe_error(location, e):
    text = str(e).strip() or e.__class__.__name__
    return "%s: %s" % (location, text)


def revid_text(revid):
    return revid.decode("utf-8")


def walk_branches(location, t):
    """Heads of the branches below transport t, never descending into a branch.

    Symlinks are never followed (a local location only: other transports
    do not say). The search is bounded in depth and in entries looked at.
    """
    heads = []
    found_any = [False]
    entries = [0]
    local_base = None
    try:
        local_base = t.local_abspath(".")
    except errors.NotLocalUrl:
        pass

    def visit(dir_t, rel, depth):
        try:
            names = sorted(dir_t.list_dir("."))
        except errors.TransportNotPossible:
            raise Failure("%s is not a Bazaar branch, and its directory cannot be listed over "
                          "this transport; point the URL at a branch" % location)
        for escaped in names:
            entries[0] += 1
            if entries[0] > MAX_ENTRIES:
                raise Failure("%s: more than %d entries to search for branches; point the URL "
                              "at a narrower directory" % (location, MAX_ENTRIES))
            name = urlutils.unescape(escaped)
            if name == ".bzr":
                continue
            child_rel = name if not rel else rel + "/" + name
            if local_base is not None:
                st = os.lstat(os.path.join(local_base, child_rel))
                if not stat.S_ISDIR(st.st_mode):  # symlinks too: never followed
                    continue
            else:
                try:
                    if not stat.S_ISDIR(dir_t.stat(escaped).st_mode):
                        continue
                except (errors.TransportNotPossible, errors.NoSuchFile):
                    continue
            child_t = dir_t.clone(escaped)
            try:
                cd = controldir.ControlDir.open_from_transport(child_t)
            except errors.NotBranchError:
                cd = None
            if cd is not None:
                try:
                    branch = cd.open_branch()
                except errors.NotBranchError:
                    branch = None
                if branch is not None:
                    found_any[0] = True
                    revid = branch.last_revision()
                    if revid != NULL_REVISION:
                        heads.append({"branch": child_rel, "revision": revid_text(revid)})
                    continue
            if depth + 1 < MAX_DEPTH:
                visit(child_t, child_rel, depth + 1)

    visit(t, "", 0)
    return heads, found_any[0]


def op_heads(req):
    location = req["url"]
    url = location_url(location)
    try:
        branch = Branch.open(url)  # follows branch references
    except errors.NotBranchError:
        branch = None
    except Exception as e:  # connection refused, bad URL, unknown format...
        raise Failure(describe_error(location, e))
    if branch is not None:
        revid = branch.last_revision()
        return [] if revid == NULL_REVISION else [{"branch": "trunk", "revision": revid_text(revid)}]
    try:
        t = transport.get_transport(url)
        if not t.has("."):
            raise Failure("%s does not exist" % location)
        try:
            cd = controldir.ControlDir.open_from_transport(t)
        except errors.NotBranchError:
            cd = None
        is_repository = False
        if cd is not None:
            try:
                cd.open_repository()
                is_repository = True
            except errors.NoRepositoryPresent:
                pass
        heads, found_any = walk_branches(location, t)
    except Failure:
        raise
    except Exception as e:
        raise Failure(describe_error(location, e))
    if not found_any:
        if is_repository:
            raise Failure("%s is a Bazaar repository with no branches; point the URL at a branch "
                          "or at a directory of branches" % location)
        raise Failure("%s is not a Bazaar branch and holds no branches" % location)
    return heads


# --------------------------------------------------------------------------
# The proxy: a shared repository without working trees


def open_proxy_repository(proxy):
    try:
        return Repository.open(location_url(proxy))
    except (errors.NotBranchError, errors.NoRepositoryPresent):
        raise Failure("the proxy %s is not a Bazaar repository (nothing was pulled into it yet)"
                      % proxy)


def open_or_create_proxy(proxy):
    t = transport.get_transport(location_url(proxy))
    t.create_prefix()
    try:
        cd = controldir.ControlDir.open_from_transport(t)
    except errors.NotBranchError:
        cd = controldir.format_registry.make_controldir("2a").initialize_on_transport(t)
    try:
        return cd.open_repository()
    except errors.NoRepositoryPresent:
        repo = cd.create_repository(shared=True)
        repo.set_make_working_trees(False)
        return repo


def pull(proxy, prefix, url, branches):
    """Pulls each branch from the upstream into <proxy>/<prefix><branch>,
    overwriting: the upstream may have uncommitted or rewritten history."""
    location = url
    url = location_url(url)
    try:
        source_is_branch = Branch.open(url)
    except errors.NotBranchError:
        source_is_branch = None
    repo = open_or_create_proxy(proxy)
    proxy_url = repo.controldir.root_transport.base
    for name in branches:
        if source_is_branch is not None:
            if name != "trunk":
                raise Failure("%s is a branch: its only head is 'trunk', not '%s'" % (location, name))
            source = source_is_branch
        else:
            try:
                source = Branch.open(join(url, name))
            except errors.NotBranchError:
                raise Failure("%s has no branch '%s'" % (location, name))
        dest_url = join(proxy_url, prefix + name)
        try:
            dest = Branch.open(dest_url)
        except errors.NotBranchError:
            transport.get_transport(dest_url).create_prefix()
            dest = controldir.ControlDir.create_branch_convenience(
                dest_url, force_new_repo=False, force_new_tree=False,
                format=controldir.format_registry.make_controldir("2a"))
        if dest.repository.controldir.root_transport.base != proxy_url:
            raise Failure("%s would not share the proxy's repository %s" % (dest_url, proxy))
        dest.pull(source, overwrite=True)


def op_pull(req):
    pull(req["proxy"], req["prefix"], req["url"], req["branches"])
    return None


def op_forget(req):
    """Removes <proxy>/<prefix> (branch directories only, never revisions)."""
    proxy = os.path.realpath(req["proxy"])
    target = os.path.realpath(os.path.join(proxy, req["prefix"]))
    if not target.startswith(proxy + os.sep):
        raise Failure("refusing to forget %s: not inside the proxy %s" % (req["prefix"], proxy))
    if not os.path.lexists(target):
        return None
    for top, dirs, _files in os.walk(target):
        if os.path.basename(top) == ".bzr" and "repository" in dirs:
            raise Failure("refusing to forget %s: it holds a repository" % target)
    shutil.rmtree(target)
    return None


# --------------------------------------------------------------------------
# Commits


def iso_date(timestamp, offset_seconds):
    offset_seconds = int(offset_seconds or 0)
    zone = datetime.timezone(datetime.timedelta(seconds=offset_seconds))
    when = datetime.datetime.fromtimestamp(int(timestamp), zone)
    sign = "-" if offset_seconds < 0 else "+"
    hours, minutes = divmod(abs(offset_seconds) // 60, 60)
    return when.strftime("%Y-%m-%dT%H:%M:%S") + "%s%02d:%02d" % (sign, hours, minutes)


def changed_files(delta):
    """Paths changed in a TreeDelta: files by path, directories only when renamed."""
    files = []
    for change in delta.added + delta.copied:
        if change.kind[1] != "directory":
            files.append(change.path[1])
    for change in delta.removed:
        if change.kind[0] != "directory":
            files.append(change.path[0])
    for change in delta.renamed:
        files.extend([change.path[0], change.path[1]])
    for change in delta.modified + delta.kind_changed:
        files.append(change.path[1])
    return sorted(set(p for p in files if p))


def op_commits(req):
    proxy = req["proxy"]
    to = req["to"].encode("utf-8")
    limit = int(req["limit"])
    repo = open_proxy_repository(proxy)
    with repo.lock_read():
        if not repo.has_revision(to):
            raise Failure("revision %s is not in the proxy %s" % (req["to"], proxy))
        present = repo.has_revisions([x.encode("utf-8") for x in req.get("exclude", [])])
        graph = repo.get_graph()
        if present:
            wanted = graph.find_unique_ancestors(to, list(present))
        else:
            wanted = set(r for r, _ in graph.iter_ancestry([to]))
        wanted.discard(NULL_REVISION)
        parent_map = graph.get_parent_map(wanted)  # ghosts have no entry: left out
        restricted = {r: [p for p in ps if p in parent_map] for r, ps in parent_map.items()}
        # merge_sort gives children before parents, mainline first: reversed, the
        # oldest come first and a merged line comes just before its merge.
        order = [node[1] for node in tsort.merge_sort(restricted, to)]
        order.reverse()
        if limit < len(order):
            order = order[len(order) - limit:]
        revisions = dict(zip(order, repo.get_revisions(order)))
        commits = []
        for revid in order:
            rev = revisions[revid]
            left = rev.parent_ids[0] if rev.parent_ids else NULL_REVISION
            if left != NULL_REVISION and not repo.has_revision(left):
                left = NULL_REVISION  # a ghost parent: everything counts as added
            new_tree = repo.revision_tree(revid)
            old_tree = repo.revision_tree(left)
            files = changed_files(new_tree.changes_from(old_tree))
            date = iso_date(rev.timestamp, rev.timezone)
            commits.append({
                "revision": revid_text(revid),
                "parents": [revid_text(p) for p in rev.parent_ids],
                "author": ", ".join(rev.get_apparent_authors()),
                "author_date": date,
                "committer": rev.committer,
                "committer_date": date,
                "message": rev.message,
                "files": files,
            })
        return commits


# --------------------------------------------------------------------------
# Tree digest: git's tree id of the revision's content


class BlobCache:
    """Git blob ids by (file id, last-changed revision), least recently used out."""

    def __init__(self, size):
        self.size = size
        self.items = collections.OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            value = self.items.get(key)
            if value is not None:
                self.items.move_to_end(key)
            return value

    def put(self, key, value):
        with self.lock:
            self.items[key] = value
            self.items.move_to_end(key)
            while len(self.items) > self.size:
                self.items.popitem(last=False)


BLOBS = BlobCache(BLOB_CACHE_SIZE)


def git_object(kind, data):
    return hashlib.sha1(b"%s %d\0" % (kind, len(data)) + data).digest()


def git_tree_id(tree):
    """Git's tree id: modes 100644/100755/120000/40000, empty directories left out."""
    children = collections.defaultdict(list)  # directory path -> [(name, mode, sha)]
    directories = []
    missing = []  # (path, key) of blobs to compute
    entries = []
    for path, entry in tree.iter_entries_by_dir():
        if entry.kind == "directory":
            directories.append(path)
            continue
        if entry.kind == "file":
            mode = b"100755" if entry.executable else b"100644"
        elif entry.kind == "symlink":
            mode = b"120000"
        else:
            continue  # tree references: not content
        key = (entry.file_id, entry.revision, mode == b"120000")
        entries.append((path, mode, key, entry))
        if BLOBS.get(key) is None:
            if entry.kind == "symlink":
                BLOBS.put(key, git_object(b"blob", entry.symlink_target.encode("utf-8")))
            else:
                missing.append((path, key))
    for key, chunks in tree.iter_files_bytes(missing):
        BLOBS.put(key, git_object(b"blob", b"".join(chunks)))
    for path, mode, key, _entry in entries:
        sha = BLOBS.get(key)
        if sha is None:  # evicted meanwhile by another request: compute again
            data = tree.get_file_text(path)
            sha = git_object(b"blob", data)
        parent, _, name = path.rpartition("/")
        children[parent].append((name.encode("utf-8"), mode, sha))
    # Deepest first, so that each directory is finished before its parent.
    for path in sorted(directories, key=lambda p: -p.count("/") if p else 1):
        if path == "":
            continue
        items = children.get(path)
        if not items:
            continue  # git keeps no empty directory
        parent, _, name = path.rpartition("/")
        children[parent].append((name.encode("utf-8"), b"40000", make_tree(items)))
    return make_tree(children.get("", [])).hex()


def make_tree(items):
    # git orders a directory as if its name ended with "/".
    items.sort(key=lambda i: i[0] + b"/" if i[1] == b"40000" else i[0])
    body = b"".join(b"%s %s\0%s" % (mode, name, sha) for name, mode, sha in items)
    return git_object(b"tree", body)


def op_digest(req):
    repo = open_proxy_repository(req["proxy"])
    revid = req["revision"].encode("utf-8")
    with repo.lock_read():
        if not repo.has_revision(revid):
            raise Failure("revision %s is not in the proxy %s" % (req["revision"], req["proxy"]))
        tree = repo.revision_tree(revid)
        with tree.lock_read():
            return git_tree_id(tree)


# --------------------------------------------------------------------------
# Export


def export(proxy, revision, out):
    repo = open_proxy_repository(proxy)
    revid = revision.encode("utf-8")
    with repo.lock_read():
        if not repo.has_revision(revid):
            raise Failure("revision %s is not in the proxy %s" % (revision, proxy))
        mtime = int(repo.get_revision(revid).timestamp)
        tree = repo.revision_tree(revid)
        with tree.lock_read(), tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT,
                                            encoding="utf-8") as tar:
            for path, entry in tree.iter_entries_by_dir():
                if path == "":
                    continue
                info = tarfile.TarInfo(path)
                info.mtime = mtime
                if entry.kind == "directory":
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o755
                    tar.addfile(info)
                elif entry.kind == "file":
                    info.mode = 0o755 if entry.executable else 0o644
                    info.size = entry.text_size
                    with tree.get_file(path) as f:
                        tar.addfile(info, f)
                elif entry.kind == "symlink":
                    info.type = tarfile.SYMTYPE
                    info.mode = 0o777
                    info.linkname = entry.symlink_target
                    tar.addfile(info)
    out.flush()


# --------------------------------------------------------------------------
# The server


OPS = {"heads": op_heads, "commits": op_commits, "digest": op_digest, "forget": op_forget,
       "pull": op_pull}


class Server:
    def __init__(self, protocol_in, protocol_out):
        self.input = protocol_in
        self.output = protocol_out
        self.write_lock = threading.Lock()
        self.deadlines = {}  # id -> (deadline, op, timeout)
        self.deadlines_lock = threading.Lock()
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS)
        self.pulls = concurrent.futures.ThreadPoolExecutor(max_workers=WORKERS)

    def send(self, message):
        line = json.dumps(message, ensure_ascii=False).encode("utf-8") + b"\n"
        with self.write_lock:  # one whole line at a time
            self.output.write(line)
            self.output.flush()

    def handle(self, req):
        rid = req.get("id")
        timeout = int(req.get("timeout") or 600)
        with self.deadlines_lock:  # from now: time spent queued does not count
            self.deadlines[rid] = (time.monotonic() + timeout, str(req.get("op")), timeout)
        try:
            op = OPS.get(req.get("op"))
            if op is None:
                raise Failure("unknown operation %r" % req.get("op"))
            result = op(req)
            answer = {"id": rid, "ok": True, "result": result}
        except Failure as e:
            answer = {"id": rid, "ok": False, "error": str(e)}
        except Exception as e:  # a Breezy error we did not expect: say what it was
            answer = {"id": rid, "ok": False, "error": "%s: %s" % (e.__class__.__name__, e)}
        with self.deadlines_lock:
            if self.deadlines.pop(rid, None) is None:
                return  # timed out meanwhile: answered already
        self.send(answer)

    def watchdog(self):
        """Fails an overdue request and ends the server (its thread cannot be
        stopped); faulthandler ends it from C even if Python is stuck."""
        while True:
            time.sleep(1)
            now = time.monotonic()
            with self.deadlines_lock:
                overdue = [(rid, d) for rid, d in self.deadlines.items() if d[0] <= now]
                earliest = min((d[0] for d in self.deadlines.values()), default=None)
                for rid, _ in overdue:
                    del self.deadlines[rid]
            if overdue:
                for rid, (_, op, timeout) in overdue:
                    self.send({"id": rid, "ok": False,
                               "error": "%s timed out after %d s" % (op, timeout)})
                    sys.stderr.write("request %s (%s) timed out after %d s; restarting\n"
                                     % (rid, op, timeout))
                sys.stderr.flush()
                os._exit(3)
            if earliest is None:
                faulthandler.cancel_dump_traceback_later()
            else:
                faulthandler.dump_traceback_later(max(earliest - now, 0) + 10, exit=True)

    def run(self):
        threading.Thread(target=self.watchdog, daemon=True).start()
        self.send({"ready": True, "breezy": breezy.version_string})
        for line in self.input:
            if not line.strip():
                continue
            try:
                req = json.loads(line)
                rid = req["id"]
            except (ValueError, KeyError, TypeError):
                sys.stderr.write("ignoring a malformed request line\n")
                continue
            (self.pulls if req.get("op") == "pull" else self.pool).submit(self.handle, req)
        # EOF: no more requests. Finish those under way (the watchdog still
        # bounds them), then leave without waiting for Python's teardown.
        self.pool.shutdown(wait=True)
        self.pulls.shutdown(wait=True)
        self.output.flush()
        os._exit(0)


def detach():
    """No terminal to prompt on (ssh, a password), no stray reads of stdin."""
    try:
        os.setsid()
    except OSError:
        pass
    ui.ui_factory = ui.SilentUIFactory()


def main(argv):
    if len(argv) < 2:
        sys.stderr.write("usage: %s serve | pull PROXY PREFIX URL BRANCH... | export PROXY REVID\n"
                         % argv[0])
        return 2
    detach()
    mode = argv[1]
    with breezy.initialize(setup_ui=False):
        ui.ui_factory = ui.SilentUIFactory()
        try:
            if mode == "serve":
                # The protocol keeps its own descriptors; stdin becomes /dev/null
                # and stdout stderr, so nothing Breezy does can touch the protocol.
                protocol_in = os.fdopen(os.dup(0), "rb")
                protocol_out = os.fdopen(os.dup(1), "wb")
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(2, 1)
                Server(protocol_in, protocol_out).run()
            elif mode == "pull" and len(argv) >= 6:
                pull(argv[2], argv[3], argv[4], argv[5:])
            elif mode == "export" and len(argv) == 4:
                out = os.fdopen(os.dup(1), "wb")
                os.dup2(2, 1)
                export(argv[2], argv[3], out)
            else:
                sys.stderr.write("bad arguments: %r\n" % (argv[1:],))
                return 2
        except Failure as e:
            sys.stderr.write("%s\n" % e)
            return 1
        except errors.BzrError as e:
            sys.stderr.write("%s: %s\n" % (e.__class__.__name__, e))
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
