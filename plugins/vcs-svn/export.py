#!/usr/bin/python3
"""pefnos's Subversion exporter: one branch's history as a git fast-import
stream, read from a local repository (the plugin's svnsync mirror) through
Subversion's own bindings.

    vcs-svn-export.py REPOSITORY ROOT BRANCH REVISION FIRST_MARK REF

REPOSITORY is the local repository's directory; ROOT the repository path of
the upstream URL ("" or "/proj"); BRANCH the branch's path relative to ROOT at
REVISION. The revisions the target already has arrive on stdin, one
"MARK PATH@REV" line each, ids relative to ROOT as the plugin names them.

The history is what `svn log -v BRANCH@REVISION` lists (svn_repos_get_logs4,
following copies), named as the plugin's listCommits names it: PATH@REV, PATH
the branch's path at REV. Revisions from the newest known one back are not
exported; each exported one is a commit with `from` its predecessor. Files
are written with the content `svn export --ignore-keywords` gives: no keyword
expansion, line ends translated as svn:eol-style says (native is LF here),
svn:special links as symlinks, svn:executable as mode 100755. Directories
hold no content in git: empty ones vanish, as in the plugin's tree digest.

The stream goes to stdout as it is made (file contents in pieces); errors go
to stderr with exit status 1.
"""

import calendar
import sys
import time

from svn import core, fs, repos

PIECE = 64 * 1024
EOLS = {b"native": b"\n", b"LF": b"\n", b"CRLF": b"\r\n", b"CR": b"\r"}
FILE, DIRECTORY = core.svn_node_file, core.svn_node_dir


class Failure(Exception):
    pass


def relative_to(path, root):
    """path below root (both repository paths), or None: as svn_parse's relativeTo."""
    if not path.startswith(root) or len(path) <= len(root) + 1 or path[len(root)] != "/":
        return None
    return path[len(root) + 1:]


def quoted(path):
    """A path as fast-import reads it: C-quoted when it could be misread."""
    raw = path.encode("utf-8") if isinstance(path, str) else path
    if not any(c in b'"\\' or c < 0x20 or c == 0x7F for c in raw):
        return raw
    out = bytearray(b'"')
    for c in raw:
        if c in b'"\\':
            out += b"\\" + bytes([c])
        elif c == 0x0A:
            out += b"\\n"
        elif c < 0x20 or c == 0x7F:
            out += b"\\%03o" % c
        else:
            out.append(c)
    return bytes(out + b'"')


def epoch(svn_date):
    """svn:date ("2024-01-02T03:04:05.678901Z", UTC) in seconds."""
    if not svn_date:
        return 0
    text = svn_date.decode("ascii", "replace")
    try:
        return calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        raise Failure("unreadable svn:date %r" % text)


def person(author):
    """svn:author as fast-import's NAME <EMAIL>: the user name in both."""
    name = (author or b"").translate(None, b"<>\n")
    return name + b" <" + name + b">" if name else b"<>"


class Step:
    """One revision of the branch's history."""

    def __init__(self, revision, path, revprops, changes):
        self.revision = revision
        self.path = path  # the branch's repository path at this revision (str)
        self.revprops = revprops
        self.changes = changes  # [(path, action)] at, above or below self.path


class StopWalk(Exception):
    pass


def history(repository, branch_path, revision, each):
    """Calls each(step) for the branch's steps, newest first, as svn log
    lists them and svn_parse's branchHistory names them, until each raises
    StopWalk."""
    state = {"path": branch_path}

    def receive(entry, pool):
        path = state["path"]
        changes, copy = [], None
        for changed, change in (entry.changed_paths2 or {}).items():
            changed = changed.decode("utf-8")
            above = changed == path or path.startswith(changed + "/")
            if not above and not changed.startswith(path + "/"):
                continue
            action = change.action.decode("ascii")
            changes.append((changed, action))
            if above and change.copyfrom_path and action in "AR":
                if copy is None or len(changed) > len(copy[0]):  # the deepest copy wins
                    copy = (changed, change.copyfrom_path.decode("utf-8"))
        each(Step(entry.revision, path, dict(entry.revprops or {}), changes))
        if copy:
            state["path"] = copy[1] + path[len(copy[0]):]

    props = [b"svn:author", b"svn:date", b"svn:log"]
    try:
        repos.get_logs4(repository, [branch_path], revision, 0, 0, True, False, False, props,
                        None, receive)
    except StopWalk:
        pass


def to_export(repository, url_root, branch, revision, known):
    """The steps to export, oldest first, and the known mark of the parent of
    the oldest (None: it is a root)."""
    newest_known = {}  # path -> its newest known revision
    for rid in known:
        path, _, rev = rid.rpartition("@")
        if rev.isdigit():
            newest_known[path] = max(newest_known.get(path, -1), int(rev))
    todo, parent = [], []

    def each(step):
        if not todo and step.revision != revision:
            raise Failure("%s did not change in r%d: its revision id there is %s@%d"
                          % (branch, revision, branch, step.revision))
        rel = relative_to(step.path, url_root)
        if rel is None:
            raise StopWalk()  # history from outside the URL: not ours to name
        rid = "%s@%d" % (rel, step.revision)
        if rid in known:  # the target has it, and so everything older
            parent.append(known[rid])
            raise StopWalk()
        if newest_known.get(rel, -1) >= step.revision:
            raise Failure("the known marks are incomplete: %s is in the target's history "
                          "(before %s@%d) but has no mark" % (rid, rel, newest_known[rel]))
        todo.append((step, rid))

    history(repository, url_root + "/" + branch, revision, each)
    if not todo:
        raise Failure("nothing to export up to %s@%d" % (branch, revision))
    return list(reversed(todo)), (parent[0] if parent else None)


def read_known():
    known = {}
    for line in sys.stdin.buffer:
        line = line.rstrip(b"\n")
        if not line:
            continue
        mark, _, rid = line.partition(b" ")
        if not mark.isdigit() or not rid:
            raise Failure("bad known mark line %r" % line)
        known[rid.decode("utf-8")] = int(mark)
    return known


class Exporter:
    def __init__(self, repository, out, ref):
        self.repository = repository
        self.fs = repos.fs(repository)
        self.out = out
        self.ref = ref

    def commit(self, step, rid, mark, parent):
        """Writes step as commit :mark (its parent :parent, or a root)."""
        pool = core.svn_pool_create()
        try:
            root = fs.revision_root(self.fs, step.revision, pool)
            w = self.out.write
            if parent is None:
                w(b"reset " + self.ref + b"\n")
            w(b"commit " + self.ref + b"\nmark :%d\n" % mark)
            w(b"original-oid " + rid.encode("utf-8") + b"\n")
            who = person(step.revprops.get(b"svn:author"))
            when = b" %d +0000\n" % epoch(step.revprops.get(b"svn:date"))
            w(b"author " + who + when + b"committer " + who + when)
            message = step.revprops.get(b"svn:log") or b""
            w(b"data %d\n" % len(message) + message + b"\n")
            if parent is not None:
                w(b"from :%d\n" % parent)
            self.changes(root, step, parent is None, pool)
            w(b"\n")
        finally:
            core.svn_pool_destroy(pool)

    def changes(self, root, step, is_root, pool):
        """The commit's file commands: the change against the previous step,
        or the whole tree when the branch (or a directory above it) was made
        here."""
        base = step.path
        deletes, files = [], set()
        whole = is_root
        for path, action in step.changes:
            if path == base or base.startswith(path + "/"):
                if action in "AR":
                    whole = True
                continue
            rel = path[len(base) + 1:]
            if action in "DR":
                deletes.append(rel)
            if action in "AR":
                self.collect(root, path, rel, files, pool)
            elif action == "M" and fs.check_path(root, path, pool) == FILE:
                files.add(rel)
        if whole:
            self.out.write(b"deleteall\n")
            files.clear()
            self.collect(root, base, "", files, pool)
        else:
            for rel in sorted(set(deletes)):
                self.out.write(b"D " + quoted(rel) + b"\n")
        for rel in sorted(files):
            self.file(root, base + "/" + rel, rel, pool)

    def collect(self, root, path, rel, files, pool):
        """Every file at or under path (repository path; rel from the branch)."""
        kind = fs.check_path(root, path, pool)
        if kind == FILE:
            files.add(rel)
        elif kind == DIRECTORY:
            for name, entry in sorted(fs.dir_entries(root, path, pool).items()):
                name = name.decode("utf-8")
                self.collect(root, path + "/" + name, rel + "/" + name if rel else name, files,
                             pool)

    def file(self, root, path, rel, pool):
        props = fs.node_proplist(root, path, pool)
        w = self.out.write
        if b"svn:special" in props:
            head = core.Stream(fs.file_contents(root, path, pool)).read(PIECE + 5)
            if head.startswith(b"link ") and len(head) <= PIECE + 4:
                target = head[5:]
                w(b"M 120000 inline " + quoted(rel) + b"\ndata %d\n" % len(target) + target + b"\n")
                return
        mode = b"100755" if b"svn:executable" in props else b"100644"
        w(b"M " + mode + b" inline " + quoted(rel) + b"\n")
        eol = EOLS.get((props.get(b"svn:eol-style") or b"").strip())
        if eol is None or b"svn:special" in props:
            length = fs.file_length(root, path, pool)
            w(b"data %d\n" % length)
            copied = self.copy(core.Stream(fs.file_contents(root, path, pool)), None)
        else:  # translated: the length is known only after a first pass
            length = self.copy(core.Stream(fs.file_contents(root, path, pool)), eol, count=True)
            w(b"data %d\n" % length)
            copied = self.copy(core.Stream(fs.file_contents(root, path, pool)), eol)
        if copied != length:
            raise Failure("%s@%d changed size while being read"
                          % (path, fs.revision_root_revision(root)))
        w(b"\n")

    def copy(self, stream, eol, count=False):
        """Writes (or only counts) a file's content, line ends translated to eol."""
        total, pending_cr = 0, False
        while True:
            piece = stream.read(PIECE)
            if not piece:
                break
            if eol is not None:
                if pending_cr:
                    piece = b"\r" + piece
                    pending_cr = False
                if piece.endswith(b"\r"):  # perhaps half of a CRLF
                    piece, pending_cr = piece[:-1], True
                piece = piece.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
                if eol != b"\n":
                    piece = piece.replace(b"\n", eol)
            total += len(piece)
            if not count:
                self.out.write(piece)
        if pending_cr:
            total += len(eol)
            if not count:
                self.out.write(eol)
        return total


def main(argv):
    if len(argv) != 7:
        raise Failure("usage: %s REPOSITORY ROOT BRANCH REVISION FIRST_MARK REF" % argv[0])
    directory, url_root, branch, revision, first_mark, ref = argv[1:]
    revision, first_mark, ref = int(revision), int(first_mark), ref.encode("utf-8")
    known = read_known()
    repository = repos.open(directory)
    todo, parent = to_export(repository, url_root, branch, revision, known)

    exporter = Exporter(repository, sys.stdout.buffer, ref)
    mark = first_mark
    for step, rid in todo:
        exporter.commit(step, rid, mark, parent)
        parent, mark = mark, mark + 1
    sys.stdout.buffer.flush()


if __name__ == "__main__":
    try:
        main(sys.argv)
    except (Failure, core.SubversionException, ValueError) as e:
        sys.stderr.write("%s\n" % e)
        sys.exit(1)
    except BrokenPipeError:
        sys.exit(1)
