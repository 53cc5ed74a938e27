// Process: a child started from argv (never through a shell), its pipes, and
// runToCompletion for set-up code.
#include "core/base/log.h"
#include "core/loop/loop.h"

namespace pefnos::loop {

using detail::callSafely;
using detail::uvMessage;

// The process handle and its pipes close together; the impl goes with the last one.
struct Process::Impl {
  uv_process_t handle;
  uv_pipe_t pipes[3];  // stdin, stdout, stderr; used only where Stdio::pipe
  bool piped[3] = {false, false, false};
  bool spawned_handle = false;  // uv_spawn initialises the handle even when it fails
  int open_handles = 0;
  int open_reads = 0;  // stdout/stderr pipes not yet at EOF
  bool exited = false, exit_reported = false;
  bool reading[3] = {false, false, false};  // stdout [1], stderr [2]: being read now
  bool ended[3] = {false, false, false};    // at EOF
  bool owner_gone = false;
  int64_t exit_status = 0;
  int term_signal = 0;
  std::string name;  // argv[0], for messages
  Callbacks callbacks;
  char buffer[64 * 1024];
};

namespace {

using Impl = Process::Impl;

void closed(uv_handle_t* h) {
  auto* impl = static_cast<Impl*>(h->data);
  if (--impl->open_handles == 0) delete impl;
}

void reportExitWhenComplete(Impl* impl) {
  if (!impl->exited || impl->open_reads > 0 || impl->exit_reported) return;
  impl->exit_reported = true;
  callSafely("process", impl->callbacks.on_exit, impl->exit_status, impl->term_signal);
}

void onRead(uv_stream_t* s, ssize_t n, const uv_buf_t*) {
  auto* impl = static_cast<Impl*>(s->data);
  bool is_stdout = s == reinterpret_cast<uv_stream_t*>(&impl->pipes[1]);
  if (n > 0) {
    auto& cb = is_stdout ? impl->callbacks.on_stdout : impl->callbacks.on_stderr;
    callSafely("process", cb, std::string_view(impl->buffer, static_cast<size_t>(n)));
    return;
  }
  if (n == 0) return;  // EAGAIN
  // EOF, or an error that ends this pipe all the same.
  if (n != UV_EOF)
    log::warning("process", uvMessage("reading output of " + impl->name, static_cast<int>(n)));
  uv_read_stop(s);
  const int i = is_stdout ? 1 : 2;
  impl->reading[i] = false;
  impl->ended[i] = true;
  --impl->open_reads;
  reportExitWhenComplete(impl);
}

void onAlloc(uv_handle_t* h, size_t, uv_buf_t* buf) {
  auto* impl = static_cast<Impl*>(h->data);
  *buf = uv_buf_init(impl->buffer, sizeof impl->buffer);
}

void onExit(uv_process_t* h, int64_t exit_status, int term_signal) {
  auto* impl = static_cast<Impl*>(h->data);
  impl->exited = true;
  impl->exit_status = exit_status;
  impl->term_signal = term_signal;
  reportExitWhenComplete(impl);
}

std::vector<char*> cStrings(std::vector<std::string>& strings) {
  std::vector<char*> out;
  for (auto& s : strings) out.push_back(s.data());
  out.push_back(nullptr);
  return out;
}

}  // namespace

Process::Process() : impl_(new Impl) {}

Process::~Process() {
  impl_->owner_gone = true;
  impl_->callbacks = {};
  auto close = [this](void* handle) {
    ++impl_->open_handles;
    uv_close(static_cast<uv_handle_t*>(handle), closed);
  };
  if (impl_->spawned_handle) close(&impl_->handle);
  for (int i = 0; i < 3; ++i)
    if (impl_->piped[i]) close(&impl_->pipes[i]);
  if (impl_->open_handles == 0) delete impl_;
}

Result<std::unique_ptr<Process>> Process::spawn(uv_loop_t* loop, ProcessOptions o,
                                                Callbacks callbacks) {
  if (o.argv.empty()) return Error{"cannot start a process: empty argv"};
  std::unique_ptr<Process> p(new Process);
  Impl* impl = p->impl_;
  impl->name = o.argv[0];
  impl->callbacks = std::move(callbacks);
  impl->handle.data = impl;

  using Stdio = ProcessOptions::Stdio;
  uv_stdio_container_t stdio[3];
  Stdio modes[3] = {o.in, o.out, o.err};
  int fds[3] = {-1, o.out_fd, o.err_fd};
  for (int i = 0; i < 3; ++i) {
    if (fds[i] >= 0) {
      stdio[i].flags = UV_INHERIT_FD;
      stdio[i].data.fd = fds[i];
    } else if (modes[i] == Stdio::inherit) {
      stdio[i].flags = UV_INHERIT_FD;
      stdio[i].data.fd = i;
    } else if (modes[i] == Stdio::pipe) {
      uv_pipe_init(loop, &impl->pipes[i], 0);
      impl->pipes[i].data = impl;
      impl->piped[i] = true;
      // Flags are from the child's side: it reads stdin, writes stdout/stderr.
      int direction = i == 0 ? UV_READABLE_PIPE : UV_WRITABLE_PIPE;
      stdio[i].flags = static_cast<uv_stdio_flags>(UV_CREATE_PIPE | direction);
      stdio[i].data.stream = reinterpret_cast<uv_stream_t*>(&impl->pipes[i]);
    } else {
      stdio[i].flags = UV_IGNORE;  // libuv connects /dev/null
    }
  }

  std::vector<char*> args = cStrings(o.argv);
  std::vector<char*> env;
  if (o.env) env = cStrings(*o.env);
  uv_process_options_t options{};
  options.exit_cb = onExit;
  options.file = args[0];
  options.args = args.data();
  options.env = o.env ? env.data() : nullptr;
  options.cwd = o.cwd.empty() ? nullptr : o.cwd.c_str();
  options.stdio_count = 3;
  options.stdio = stdio;
  if (o.uid) {
    options.flags |= UV_PROCESS_SETUID;
    options.uid = *o.uid;
  }
  if (o.gid) {
    options.flags |= UV_PROCESS_SETGID;
    options.gid = *o.gid;
  }
  if (o.detached) options.flags |= UV_PROCESS_DETACHED;

  int rc = uv_spawn(loop, &impl->handle, &options);
  impl->spawned_handle = true;
  if (rc != 0) {  // ~Process cleans up
    std::string where = o.cwd.empty() ? "" : " in " + o.cwd;
    return Error{uvMessage("cannot start " + impl->name + where, rc)};
  }

  for (int i = 1; i < 3; ++i) {
    if (!impl->piped[i]) continue;
    auto* stream = reinterpret_cast<uv_stream_t*>(&impl->pipes[i]);
    if (uv_read_start(stream, onAlloc, onRead) == 0) {
      ++impl->open_reads;
      impl->reading[i] = true;
    }
  }
  return p;
}

int Process::pid() const { return impl_->handle.pid; }

Status Process::kill(int signum) {
  std::string what = "cannot send signal " + std::to_string(signum) + " to " + impl_->name;
  // After the exit the pid may already belong to someone else.
  if (impl_->exited) return Error{what + ": it has already exited"};
  int rc = uv_process_kill(&impl_->handle, signum);
  if (rc != 0) return Error{uvMessage(what + " (pid " + std::to_string(pid()) + ")", rc)};
  return ok();
}

Status Process::writeStdin(std::string data, std::function<void(Status)> done) {
  if (!impl_->piped[0])
    return Error{"cannot write to " + impl_->name + ": its stdin is not a pipe"};
  return detail::writeStream(reinterpret_cast<uv_stream_t*>(&impl_->pipes[0]), std::move(data),
                             std::move(done), &impl_->owner_gone, impl_->name + "'s stdin");
}

Status Process::closeStdin() {
  if (!impl_->piped[0]) return Error{"cannot close stdin of " + impl_->name + ": not a pipe"};
  // Shutdown, not close: the child gets EOF only after the queued writes.
  auto* req = new uv_shutdown_t;
  int rc = uv_shutdown(req, reinterpret_cast<uv_stream_t*>(&impl_->pipes[0]),
                       [](uv_shutdown_t* req, int) { delete req; });
  if (rc == 0) return ok();
  delete req;
  return Error{uvMessage("cannot close stdin of " + impl_->name, rc)};
}

void Process::pauseOutput() {
  for (int i : {1, 2}) {
    if (impl_->piped[i] && impl_->reading[i]) {
      uv_read_stop(reinterpret_cast<uv_stream_t*>(&impl_->pipes[i]));
      impl_->reading[i] = false;
    }
  }
}

void Process::resumeOutput() {
  // Only while a pipe is open and not at EOF (open_reads counts it then).
  for (int i : {1, 2}) {
    if (impl_->piped[i] && !impl_->reading[i] && !impl_->ended[i]) {
      auto* stream = reinterpret_cast<uv_stream_t*>(&impl_->pipes[i]);
      if (uv_read_start(stream, onAlloc, onRead) == 0) impl_->reading[i] = true;
    }
  }
}

void Process::unref() {
  uv_unref(reinterpret_cast<uv_handle_t*>(&impl_->handle));
  for (int i = 0; i < 3; ++i)
    if (impl_->piped[i]) uv_unref(reinterpret_cast<uv_handle_t*>(&impl_->pipes[i]));
}

Result<CommandOutput> runToCompletion(ProcessOptions options) {
  if (options.in == ProcessOptions::Stdio::pipe) options.in = ProcessOptions::Stdio::ignore;
  std::string name = options.argv.empty() ? "" : options.argv[0];
  uv_loop_t loop;
  if (int rc = uv_loop_init(&loop); rc != 0) return Error{uvMessage("cannot create a loop", rc)};
  CommandOutput result;
  Process::Callbacks callbacks;
  callbacks.on_stdout = [&](std::string_view chunk) { result.out.append(chunk); };
  callbacks.on_stderr = [&](std::string_view chunk) { result.err.append(chunk); };
  callbacks.on_exit = [&](int64_t status, int signal) {
    result.exit_status = status;
    result.term_signal = signal;
  };
  auto process = Process::spawn(&loop, std::move(options), std::move(callbacks));
  uv_run(&loop, UV_RUN_DEFAULT);
  bool started = process.ok();
  Error error = started ? Error{} : process.error();
  if (started) process->reset();  // starts the closes that the next run completes
  uv_run(&loop, UV_RUN_DEFAULT);
  if (int rc = uv_loop_close(&loop); rc != 0) {
    return Error{uvMessage("cannot close the private loop of " + name, rc)};
  }
  if (!started) return error;
  return result;
}

}  // namespace pefnos::loop
