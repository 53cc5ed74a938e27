#!/usr/bin/python3
"""The Breezy side of pefnos's vcs-bzr plugin (installed as vcs-bzr-helper.py).

Ways to run it, each started by the plugin with argv only:

  helper.py serve                       a long-lived server speaking JSON lines:
                                        {"id":N,"op":...} in on stdin,
                                        {"id":N,"ok":true,"result":...} or
                                        {"id":N,"ok":false,"error":"..."} out on stdout
  helper.py pull PROXY PREFIX URL BRANCH...   brings branches into the proxy (one-shot;
                                        the plugin pulls through the server)
  helper.py export PROXY REVID          the revision's tree as a tar on stdout (one-shot)
  helper.py fast-export PROXY REVID REF FIRST_MARK
                                        the revisions up to REVID that the target lacks,
                                        in git's fast-import format on stdout; stdin
                                        names the target's revisions ("MARK REVID" lines)
  helper.py fast-import PROXY PREFIX BRANCH KNOWN
                                        a fast-import stream into the proxy's mirror
                                        branch for BRANCH; stdin holds KNOWN "MARK REVID"
                                        lines, then the stream; the new marks go to stdout

Exports and imports are one-shot processes (a stream of their own). The
server answers pulls and publishes from one thread pool and everything else
(heads, commits, digests, forget) from another, so that long first pulls
never hold up a poll. Each answer is written whole under a lock. A request's
deadline runs from when a thread takes it up; when one overruns, the server
kills itself: the plugin then fails what was pending and starts a fresh
server on the next request. Saving Python's start-up on every change is what
keeps a bzr poll cheap.

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
import re
import shutil
import stat
import sys
import tarfile
import tempfile
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
from breezy.transport import NoSuchFile  # noqa: E402

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
    """Removes <proxy>/<prefix> and the mirror branches <proxy>/mirror/<prefix>
    (branch directories only, never revisions)."""
    proxy = os.path.realpath(req["proxy"])
    for relative in (req["prefix"], "mirror/" + req["prefix"]):
        target = os.path.realpath(os.path.join(proxy, relative))
        if not target.startswith(proxy + os.sep):
            raise Failure("refusing to forget %s: not inside the proxy %s" % (relative, proxy))
        if not os.path.lexists(target):
            continue
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
# Mirroring: streams in git's fast-import format (see include/pefnos/vcs.h)
#
# Breezy 3.3.2's own incremental fast-export drops the parents of the first
# new revisions, so the exporter is written here: it walks only what the
# target lacks and names every parent by its mark. Imports go through
# Breezy's fast-import processor, into a branch of the proxy's own:
# <proxy>/mirror/<prefix><branch> (upstream branches live under <prefix>,
# which starts with "refs/": the two never meet).

MIRROR_DIR = "mirror"
IMPORT_REF = b"refs/heads/master"  # brz fast-import puts it on the destination branch
TREE_CACHE_SIZE = 16
REVISION_BATCH = 100


def read_known(stream):
    """{revision id: mark} from "MARK REVID" lines, up to the end of stream."""
    known = {}
    for number, line in enumerate(stream, 1):
        line = line.strip()
        if not line:
            continue
        mark, _, revid = line.partition(b" ")
        if not mark.lstrip(b":").isdigit() or not revid or b" " in revid:
            raise Failure("known revisions, line %d: want 'MARK REVISION-ID'" % number)
        known[revid] = int(mark.lstrip(b":"))
    return known


IDENT = re.compile(r"^(.*?)\s*<([^<>]*)>\s*$", re.DOTALL)


def git_ident(user, timestamp, timezone):
    """b"Name <email> SECONDS +HHMM". A user without <email> is all name (as
    brz's exporter does): "bob" becomes "bob <>"."""
    match = IDENT.match(user)
    name, email = (match.group(1), match.group(2)) if match else (user, "")

    def clean(text):  # what git's ident grammar cannot hold
        for c in "<>\n\r\0":
            text = text.replace(c, "" if c in "<>\0" else " ")
        return text.strip()

    name, email = clean(name), clean(email)
    offset = int(timezone or 0)
    sign = "-" if offset < 0 else "+"
    hours, minutes = divmod(abs(offset) // 60, 60)
    ident = "%s<%s> %d %s%02d%02d" % (name + " " if name else "", email, int(timestamp), sign,
                                      hours, minutes)
    return ident.encode("utf-8")


C_ESCAPES = {7: b"\\a", 8: b"\\b", 9: b"\\t", 10: b"\\n", 11: b"\\v", 12: b"\\f", 13: b"\\r",
             34: b'\\"', 92: b"\\\\"}


def git_path(path):
    """A path as git fast-import reads it: raw UTF-8 (spaces and non-ASCII
    included) unless it holds a quote, a backslash or a control character,
    then C-quoted."""
    raw = path.encode("utf-8")
    if not any(b < 0x20 or b == 0x7f or b in (34, 92) for b in raw):
        return raw
    out = bytearray(b'"')
    for b in raw:
        if b in C_ESCAPES:
            out += C_ESCAPES[b]
        elif b < 0x20 or b == 0x7f:
            out += b"\\%03o" % b
        else:
            out.append(b)
    out += b'"'
    return bytes(out)


def tree_files(tree, path):
    """{path: (mode, identity, size)} of the files and symlinks at or under
    path in tree, as git sees them: directories are only where they lead."""
    found = {}

    def add(p, entry):
        if entry.kind == "file":
            mode = b"100755" if entry.executable else b"100644"
            found[p] = (mode, entry.text_sha1, entry.text_size)
        elif entry.kind == "symlink":
            found[p] = (b"120000", entry.symlink_target, None)
        # tree references and anything else: not content git could hold

    try:
        kind = tree.kind(path)
    except NoSuchFile:
        return found
    if kind == "directory":
        prefix = path + "/" if path else ""
        for rel, _cls, _kind, entry in tree.list_files(include_root=False, from_dir=path,
                                                       recursive=True):
            add(prefix + rel, entry)
    else:
        for _p, entry in tree.iter_entries_by_dir(specific_files=[path]):
            add(path, entry)
    return found


def file_changes(old_tree, new_tree):
    """What git must delete and write to turn old_tree into new_tree.

    Breezy reports changes by file id, so the children of a renamed
    directory go unreported though their paths changed. Every path Breezy
    names (old and new) roots a region, and both trees are compared by path
    over those regions, as git compares trees: outside them, nothing changed.
    """
    roots = set()
    for change in new_tree.iter_changes(old_tree):
        roots.update(p for p in change.path if p is not None)

    def covered(path):  # by a region rooted higher up
        if path and "" in roots:
            return True
        parts = path.split("/")
        return any("/".join(parts[:i]) in roots for i in range(1, len(parts)))

    kept = [root for root in roots if not covered(root)]
    old, new = {}, {}
    for root in kept:
        old.update(tree_files(old_tree, root))
        new.update(tree_files(new_tree, root))
    deleted = sorted(p for p in old if p not in new)
    written = sorted(p for p, v in new.items() if p not in old or old[p][:2] != v[:2])
    return deleted, [(p, new[p]) for p in written]


class Exporter:
    """Writes commits to out, parents first; never holds a file's content
    longer than it takes to write it."""

    def __init__(self, repo, ref, out):
        self.repo = repo
        self.ref = ref
        self.out = out
        self.trees = collections.OrderedDict()
        self.empty = repo.revision_tree(NULL_REVISION)

    def tree(self, revid):
        tree = self.trees.get(revid)
        if tree is None:
            tree = self.repo.revision_tree(revid)
            self.trees[revid] = tree
            while len(self.trees) > TREE_CACHE_SIZE:
                self.trees.popitem(last=False)
        else:
            self.trees.move_to_end(revid)
        return tree

    def commit(self, rev, mark, parents):
        """parents: [(revision id, mark, present)], ghosts already left out."""
        w = self.out.write
        if not parents:
            w(b"reset %s\n" % self.ref)
        w(b"commit %s\nmark :%d\noriginal-oid %s\n" % (self.ref, mark, rev.revision_id))
        authors = rev.get_apparent_authors()
        w(b"author %s\n" % git_ident(authors[0] if authors else rev.committer,
                                     rev.timestamp, rev.timezone))
        w(b"committer %s\n" % git_ident(rev.committer, rev.timestamp, rev.timezone))
        message = rev.message.encode("utf-8")
        w(b"data %d\n%s\n" % (len(message), message))
        for i, (_revid, parent_mark, _present) in enumerate(parents):
            w(b"%s :%d\n" % (b"merge" if i else b"from", parent_mark))
        new_tree = self.tree(rev.revision_id)
        if not parents:
            base = self.empty
        elif parents[0][2]:
            base = self.tree(parents[0][0])
        else:  # the first parent is known to the target but absent here: the whole tree
            w(b"deleteall\n")
            base = self.empty
        deleted, written = file_changes(base, new_tree)
        for path in deleted:
            w(b"D %s\n" % git_path(path))
        files = []
        for path, (mode, identity, size) in written:
            if mode == b"120000":
                target = identity.encode("utf-8")
                w(b"M 120000 inline %s\ndata %d\n%s\n" % (git_path(path), len(target), target))
            else:
                files.append((path, (path, mode, size)))
        for (path, mode, size), chunks in new_tree.iter_files_bytes(files):
            w(b"M %s inline %s\ndata %d\n" % (mode, git_path(path), size))
            count = 0
            for chunk in chunks:
                count += len(chunk)
                w(chunk)
            if count != size:
                raise Failure("%s in revision %s holds %d bytes, not the %d its inventory says"
                              % (path, rev.revision_id.decode("utf-8"), count, size))
            w(b"\n")
        w(b"\n")


def fast_export(proxy, revision, ref, first_mark, known, out):
    """Every ancestor of revision (itself included) that is neither known nor
    an ancestor of a known revision, parents before children; parents are
    named by their marks (known ones or this stream's)."""
    repo = open_proxy_repository(proxy)
    revid = revision.encode("utf-8")
    ref = ref.encode("utf-8")
    with repo.lock_read():
        if not repo.has_revision(revid):
            raise Failure("revision %s is not in the proxy %s" % (revision, proxy))
        if revid in known:
            return 0
        present_known = repo.has_revisions(list(known))
        graph = repo.get_graph()
        if present_known:
            wanted = graph.find_unique_ancestors(revid, list(present_known))
        else:
            wanted = set(r for r, _ in graph.iter_ancestry([revid]))
        parent_map = graph.get_parent_map(wanted)  # ghosts have no entry
        parent_map.pop(NULL_REVISION, None)
        if not parent_map:  # an ancestor of a known revision: the target has it
            return 0
        # A present parent that is neither exported nor known would be lost.
        outside = set(p for ps in parent_map.values() for p in ps
                      if p not in parent_map and p not in known and p != NULL_REVISION)
        unnamed = repo.has_revisions(list(outside)) if outside else set()
        if unnamed:
            raise Failure("revision %s is an ancestor of the target's revisions but has no mark "
                          "among them: pass every revision the target has"
                          % sorted(unnamed)[0].decode("utf-8"))
        restricted = {r: [p for p in ps if p in parent_map] for r, ps in parent_map.items()}
        # merge_sort gives children before parents, REVID first: reversed,
        # parents come first and REVID last.
        order = [node[1] for node in tsort.merge_sort(restricted, revid)]
        order.reverse()
        marks = {}
        exporter = Exporter(repo, ref, out)
        next_mark = first_mark
        for start in range(0, len(order), REVISION_BATCH):
            for rev in repo.get_revisions(order[start:start + REVISION_BATCH]):
                parents = []
                for p in rev.parent_ids:
                    if p in marks:
                        parents.append((p, marks[p], True))
                    elif p in known:
                        parents.append((p, known[p], p in present_known))
                    # else a ghost: left out
                marks[rev.revision_id] = next_mark
                exporter.commit(rev, next_mark, parents)
                next_mark += 1
        out.flush()
        return len(order)


# ---- Import


def unquote_c_path(quoted):
    """git's C quoting undone byte by byte: python-fastimport 0.9.14 turns
    each octal escape of a UTF-8 path into a character of its own, so
    "\\303\\274" became "Ã¼" instead of "ü"."""
    if isinstance(quoted, str):
        quoted = quoted.encode("utf-8")
    simple = {b"a": b"\a", b"b": b"\b", b"t": b"\t", b"n": b"\n", b"v": b"\v", b"f": b"\f",
              b"r": b"\r", b'"': b'"', b"\\": b"\\"}

    def one(match):
        escape = match.group(1)
        if escape[:1].isdigit():
            return bytes([int(escape, 8) & 0xff])
        return simple.get(escape, b"\\" + escape)

    return re.sub(rb"\\([0-7]{1,3}|.)", one, quoted, flags=re.DOTALL)


def mirror_branch(repo, prefix, name):
    """The proxy's branch that imports for the upstream branch `name` land
    on: <proxy>/mirror/<prefix><name>, made on first use at the head the
    proxy holds for that upstream branch (nothing if it holds none)."""
    proxy_url = repo.controldir.root_transport.base
    url = join(proxy_url, MIRROR_DIR + "/" + prefix + name)
    try:
        branch = Branch.open(url)
    except errors.NotBranchError:
        transport.get_transport(url).create_prefix()
        branch = controldir.ControlDir.create_branch_convenience(
            url, force_new_repo=False, force_new_tree=False,
            format=controldir.format_registry.make_controldir("2a"))
        try:
            upstream = Branch.open(join(proxy_url, prefix + name))
        except errors.NotBranchError:
            upstream = None
        if upstream is not None:
            branch.set_last_revision_info(*upstream.last_revision_info())
    if branch.repository.controldir.root_transport.base != proxy_url:
        raise Failure("%s would not share the proxy's repository" % url)
    return branch


def commands_on(ref, commands):
    """The stream's commands, as long as they write to ref only (another ref
    would make brz fast-import create a branch beside the mirror branch)."""
    for cmd in commands:
        if cmd.name in (b"commit", b"reset") and cmd.ref != ref:
            raise Failure("the stream writes to %s; this import takes %s only"
                          % (cmd.ref.decode("utf-8", "replace"), ref.decode("utf-8")))
        if cmd.name == b"tag":
            raise Failure("the stream has a tag (%s); this import takes commits only"
                          % cmd.id.decode("utf-8", "replace"))
        yield cmd


def fast_import(proxy, prefix, name, known_count, stream, out):
    """Imports the stream into the mirror branch; writes ":MARK REVID" for
    each commit mark of the stream that was not known to out."""
    from breezy.plugins.fastimport import load_fastimport
    load_fastimport()
    from breezy.plugins.fastimport.processors import generic_processor
    import fastimport.parser
    from fastimport import errors as fastimport_errors
    fastimport.parser._unquote_c_string = unquote_c_path

    class MirrorProcessor(generic_processor.GenericProcessor):
        def pre_process(self):
            super().pre_process()
            # With --import-marks, brz 3.3.2 tracks the first commit's heads
            # twice: a first commit without `from` became its own parent.
            self.first_incremental_commit = False
            # Its graph of known revisions holds only the ancestry of the
            # stream's first commit: a later merge of older history (a branch
            # from an old revision merged back) failed with "not in nodes".
            # The repository's own graph knows every revision.
            self.rev_store._use_known_graph = False

        def reset_handler(self, cmd):
            if cmd.from_ is None and not cmd.ref.startswith(b"refs/tags/"):
                # As in git: the next commit on the ref is a root (brz kept
                # the ref's last commit as its parent).
                self.cache_mgr.reftracker.last_ids.pop(cmd.ref, None)
            super().reset_handler(cmd)

        def _save_id_map(self):
            pass  # the host keeps the marks: no id map in the shared proxy

    known = {}
    for number in range(known_count):
        line = stream.readline()
        mark, _, revid = line.strip().partition(b" ")
        if not line.endswith(b"\n") or not mark.lstrip(b":").isdigit() or not revid:
            raise Failure("known marks, line %d: want 'MARK REVISION-ID'" % (number + 1))
        known[mark.lstrip(b":")] = revid
    repo = open_or_create_proxy(proxy)
    with repo.lock_read():
        missing = set(known.values()) - repo.has_revisions(list(known.values()))
    if missing:
        raise Failure("revision %s, known to the stream, is not in the proxy %s; update the "
                      "proxy first" % (sorted(missing)[0].decode("utf-8"), proxy))
    branch = mirror_branch(repo, prefix, name)
    scratch = tempfile.mkdtemp(prefix="pefnos-bzr-import-")
    try:
        import_marks = os.path.join(scratch, "known")
        export_marks = os.path.join(scratch, "marks")
        with open(import_marks, "wb") as f:
            for mark, revid in known.items():
                f.write(b":%s %s\n" % (mark, revid))
        params = {"info": None, "trees": False, "count": -1, "checkpoint": 10000,
                  "autopack": 4, "inv-cache": -1, "mode": "default",
                  "import-marks": import_marks, "export-marks": export_marks}
        processor = MirrorProcessor(branch.controldir, params=params, verbose=False)
        parser = fastimport.parser.ImportParser(stream)
        try:
            processor.process(lambda: commands_on(IMPORT_REF, parser.iter_commands()))
        except fastimport_errors.ParsingError as e:
            raise Failure("a bad stream: %s" % e)  # "line N: ..."
        except KeyError as e:
            key = e.args[0] if e.args else None
            if not isinstance(key, bytes) or not key.isdigit():
                raise
            # cache_manager.lookup_committish
            raise Failure("the stream refers to mark :%s, which neither it nor the known marks "
                          "define" % key.decode("ascii"))
        if not os.path.exists(export_marks):
            raise Failure("brz fast-import wrote no marks")
        with open(export_marks, "rb") as f:
            for line in f:
                mark, _, revid = line.strip().partition(b" ")
                mark = mark.lstrip(b":")
                if revid and known.get(mark) != revid:
                    out.write(b":%s %s\n" % (mark, revid))
        out.flush()
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


# ---- Publishing


def op_publish(req):
    """Makes the proxy's revision the upstream's branch, only from the head
    the host expects (none: the branch must not exist), under the branch's
    lock: never overwrites what someone else committed there."""
    proxy, location, name = req["proxy"], req["url"], req["branch"]
    revision, expected = req["revision"], req["expected"]
    revid = revision.encode("utf-8")
    repo = open_proxy_repository(proxy)
    with repo.lock_read():
        if not repo.has_revision(revid):
            raise Failure("revision %s is not in the proxy %s" % (revision, proxy))
    url = location_url(location)
    try:
        target = Branch.open(url)  # the location is the branch: its only head is trunk
    except errors.NotBranchError:
        target = None
    except Exception as e:
        raise Failure(describe_error(location, e))
    what = "branch '%s' of %s" % (name, location)
    try:
        if target is not None:
            if name != "trunk":
                raise Failure("%s is a branch: its only head is 'trunk', not '%s'"
                              % (location, name))
        else:
            target_url = join(url, name)
            try:
                target = Branch.open(target_url)
            except errors.NotBranchError:
                if expected:
                    raise Failure("%s has diverged: it no longer exists (expected at %s)"
                                  % (what, expected))
                transport.get_transport(target_url).create_prefix()
                target = controldir.ControlDir.create_branch_convenience(
                    target_url, force_new_tree=False,
                    format=controldir.format_registry.make_controldir("2a"))
        with target.lock_write():
            current = target.last_revision()
            if current == revid:
                return None  # published already (a run that ended before recording it)
            at = "" if current == NULL_REVISION else current.decode("utf-8")
            if at != expected:
                raise Failure("%s has diverged: it is at %s, not at %s; not overwriting it"
                              % (what, at or "nothing (it is empty)", expected or "nothing"))
            target.repository.fetch(repo, revision_id=revid)
            if current != NULL_REVISION and not target.repository.get_graph().is_ancestor(
                    current, revid):
                raise Failure("%s has diverged from %s: its head %s is not an ancestor; not "
                              "overwriting it" % (what, revision, at))
            target.generate_revision_history(revid)
    except Failure:
        raise
    except errors.LockContention as e:
        raise Failure("%s is locked by someone else: %s" % (what, e))
    except Exception as e:
        raise Failure(describe_error(location, e))
    return None


# --------------------------------------------------------------------------
# The server


OPS = {"heads": op_heads, "commits": op_commits, "digest": op_digest, "forget": op_forget,
       "pull": op_pull, "publish": op_publish}
WRITES_ELSEWHERE = ("pull", "publish")  # long, over the network: a pool of their own


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
            pool = self.pulls if req.get("op") in WRITES_ELSEWHERE else self.pool
            pool.submit(self.handle, req)
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
        sys.stderr.write("usage: %s serve | pull PROXY PREFIX URL BRANCH... | export PROXY REVID | "
                         "fast-export PROXY REVID REF FIRST_MARK | "
                         "fast-import PROXY PREFIX BRANCH KNOWN\n" % argv[0])
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
            elif mode == "fast-export" and len(argv) == 6:
                known = read_known(os.fdopen(os.dup(0), "rb"))
                out = os.fdopen(os.dup(1), "wb", buffering=1 << 20)
                os.dup2(2, 1)  # whatever Breezy prints never lands in the stream
                fast_export(argv[2], argv[3], argv[4], int(argv[5]), known, out)
            elif mode == "fast-import" and len(argv) == 6:
                stream = os.fdopen(os.dup(0), "rb", buffering=1 << 20)
                os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
                out = os.fdopen(os.dup(1), "wb")
                os.dup2(2, 1)  # brz fast-import prints to stdout; the marks go there
                fast_import(argv[2], argv[3], argv[4], int(argv[5]), stream, out)
            else:
                sys.stderr.write("bad arguments: %r\n" % (argv[1:],))
                return 2
        except Failure as e:
            sys.stderr.write("%s\n" % e)
            return 1
        except errors.BzrError as e:
            sys.stderr.write("%s: %s\n" % (e.__class__.__name__, e))
            return 1
        except BrokenPipeError:
            # Whoever read the stream stopped reading it: nothing to say, and
            # no flush at exit to fail again.
            sys.stderr.write("the reader of the stream closed it\n")
            sys.stderr.flush()
            os._exit(1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
