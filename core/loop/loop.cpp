// Timer, Signal, Poll, Async, Mailbox and the helpers the room shares.
#include "core/loop/loop.h"

#include <exception>
#include <mutex>

#include "core/base/log.h"

namespace pefnos::loop {

namespace detail {

void logCallbackException(const char* source) noexcept {
  try {
    throw;
  } catch (const std::exception& e) {
    log::error(source, "callback threw, ignored: ", e.what());
  } catch (...) {
    log::error(source, "callback threw a non-standard exception, ignored");
  }
}

std::string uvMessage(const std::string& what, int rc) { return what + ": " + uv_strerror(rc); }

namespace {
struct WriteRequest {
  uv_write_t req;
  std::string data;  // libuv reads from it until the callback
  std::function<void(Status)> done;
  const bool* owner_gone;
  std::string target;
};
}  // namespace

Status writeStream(uv_stream_t* stream, std::string data, std::function<void(Status)> done,
                   const bool* owner_gone, const std::string& target) {
  auto* w = new WriteRequest{{}, std::move(data), std::move(done), owner_gone, target};
  w->req.data = w;
  uv_buf_t buf = uv_buf_init(w->data.data(), static_cast<unsigned>(w->data.size()));
  int rc = uv_write(&w->req, stream, &buf, 1, [](uv_write_t* req, int status) {
    std::unique_ptr<WriteRequest> w(static_cast<WriteRequest*>(req->data));
    if (*w->owner_gone) return;
    callSafely(
        "loop", w->done,
        status == 0 ? ok() : Status(Error{uvMessage("cannot write to " + w->target, status)}));
  });
  if (rc == 0) return ok();
  delete w;
  return Error{uvMessage("cannot write to " + target, rc)};
}

}  // namespace detail

using detail::callSafely;
using detail::closeAndDelete;
using detail::uvMessage;

// --- Timer

struct Timer::Impl {
  uv_timer_t handle;
  int init_rc = 0;
  std::function<void()> on_fire;
};

Timer::Timer(uv_loop_t* loop) : impl_(new Impl) {
  uv_timer_init(loop, &impl_->handle);  // cannot fail
  impl_->handle.data = impl_;
}

Timer::~Timer() {
  impl_->on_fire = nullptr;
  closeAndDelete(impl_);
}

void Timer::start(uint64_t timeout_ms, uint64_t repeat_ms, std::function<void()> on_fire) {
  impl_->on_fire = std::move(on_fire);
  uv_timer_start(
      &impl_->handle,
      [](uv_timer_t* h) { callSafely("timer", static_cast<Impl*>(h->data)->on_fire); }, timeout_ms,
      repeat_ms);
}

void Timer::stop() { uv_timer_stop(&impl_->handle); }
bool Timer::active() const { return uv_is_active(reinterpret_cast<uv_handle_t*>(&impl_->handle)); }
void Timer::unref() { uv_unref(reinterpret_cast<uv_handle_t*>(&impl_->handle)); }

// --- Signal

struct Signal::Impl {
  uv_signal_t handle;
  int init_rc = 0;
  std::function<void(int)> on_signal;
};

Signal::Signal(uv_loop_t* loop) : impl_(new Impl) {
  impl_->init_rc = uv_signal_init(loop, &impl_->handle);  // fails only without fds
  impl_->handle.data = impl_;
}

Signal::~Signal() {
  impl_->on_signal = nullptr;
  closeAndDelete(impl_);
}

Status Signal::start(int signum, std::function<void(int)> on_signal) {
  std::string what = "cannot watch signal " + std::to_string(signum);
  if (impl_->init_rc != 0) return Error{uvMessage(what, impl_->init_rc)};
  impl_->on_signal = std::move(on_signal);
  int rc = uv_signal_start(
      &impl_->handle,
      [](uv_signal_t* h, int signum) {
        callSafely("signal", static_cast<Impl*>(h->data)->on_signal, signum);
      },
      signum);
  if (rc != 0) return Error{uvMessage(what, rc)};
  return ok();
}

void Signal::stop() {
  if (impl_->init_rc == 0) uv_signal_stop(&impl_->handle);
}
void Signal::unref() {
  if (impl_->init_rc == 0) uv_unref(reinterpret_cast<uv_handle_t*>(&impl_->handle));
}

// --- Poll

struct Poll::Impl {
  uv_poll_t handle;
  int init_rc = 0;
  int fd;
  std::function<void(int, int)> on_event;
};

Poll::Poll(uv_loop_t* loop, int fd) : impl_(new Impl) {
  impl_->fd = fd;
  impl_->init_rc = uv_poll_init(loop, &impl_->handle, fd);  // reported by start()
  impl_->handle.data = impl_;
}

Poll::~Poll() {
  impl_->on_event = nullptr;
  closeAndDelete(impl_);
}

Status Poll::start(int events, std::function<void(int, int)> on_event) {
  std::string what = "cannot watch fd " + std::to_string(impl_->fd);
  if (impl_->init_rc != 0) return Error{uvMessage(what, impl_->init_rc)};
  impl_->on_event = std::move(on_event);
  int rc = uv_poll_start(&impl_->handle, events, [](uv_poll_t* h, int status, int events) {
    callSafely("poll", static_cast<Impl*>(h->data)->on_event, status, events);
  });
  if (rc != 0) return Error{uvMessage(what, rc)};
  return ok();
}

void Poll::stop() {
  if (impl_->init_rc == 0) uv_poll_stop(&impl_->handle);
}
void Poll::unref() {
  if (impl_->init_rc == 0) uv_unref(reinterpret_cast<uv_handle_t*>(&impl_->handle));
}

// --- Async

struct Async::Impl {
  uv_async_t handle;
  int init_rc = 0;
  std::function<void()> on_wake;
};

Async::Async(uv_loop_t* loop, std::function<void()> on_wake) : impl_(new Impl) {
  impl_->on_wake = std::move(on_wake);
  impl_->init_rc = uv_async_init(loop, &impl_->handle, [](uv_async_t* h) {
    callSafely("async", static_cast<Impl*>(h->data)->on_wake);
  });
  impl_->handle.data = impl_;
}

Async::~Async() {
  impl_->on_wake = nullptr;
  closeAndDelete(impl_);
}

void Async::send() {
  if (impl_->init_rc == 0) uv_async_send(&impl_->handle);
}

Status Async::status() const {
  if (impl_->init_rc != 0) return Error{uvMessage("cannot create a loop wake-up", impl_->init_rc)};
  return ok();
}

void Async::unref() {
  if (impl_->init_rc == 0) uv_unref(reinterpret_cast<uv_handle_t*>(&impl_->handle));
}

// --- Mailbox

struct Mailbox::Queue {
  std::mutex mutex;
  std::vector<std::function<void()>> pending;
  bool closed = false;  // loop thread only: set by ~Mailbox, a running batch stops there
};

Mailbox::Mailbox(uv_loop_t* loop)
    : queue_(std::make_shared<Queue>()), async_(loop, [q = queue_] {
        std::vector<std::function<void()>> batch;
        {
          std::lock_guard lock(q->mutex);
          batch.swap(q->pending);
        }
        // Outside the lock: a function may post again, or destroy the Mailbox.
        for (auto& fn : batch) {
          if (q->closed) return;
          callSafely("mailbox", std::move(fn));
        }
      }) {}

Mailbox::~Mailbox() {
  std::lock_guard lock(queue_->mutex);
  queue_->closed = true;
  queue_->pending.clear();
}

void Mailbox::post(std::function<void()> fn) {
  {
    std::lock_guard lock(queue_->mutex);
    queue_->pending.push_back(std::move(fn));
  }
  async_.send();
}

}  // namespace pefnos::loop
