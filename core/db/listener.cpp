#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <set>

#include "core/base/log.h"
#include "core/db/db.h"

namespace pefnos::db {
namespace {

struct Notification {
  std::string channel;
  std::string payload;
};

// Collects what get_notifs() delivers, to hand it to the loop in one post.
class Receiver : public pqxx::notification_receiver {
 public:
  Receiver(pqxx::connection& c, const std::string& channel, std::vector<Notification>* out)
      : pqxx::notification_receiver(c, channel), out_(out) {}
  void operator()(const std::string& payload, int) override {
    out_->push_back({channel(), payload});
  }

 private:
  std::vector<Notification>* out_;
};

}  // namespace

Listener::Listener(uv_loop_t* loop, std::string conninfo, Bound bound)
    : conninfo_(std::move(conninfo)), mailbox_(loop), bound_(bound) {
  wake_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
}

Listener::~Listener() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wait_.notify_all();
  wakeThread();
  if (thread_.joinable()) thread_.join();
  if (wake_fd_ >= 0) close(wake_fd_);
}

void Listener::subscribe(const std::string& channel,
                         std::function<void(const std::string&)> handler) {
  handlers_[channel].push_back(std::move(handler));
  {
    std::lock_guard lock(mutex_);
    if (std::find(channels_.begin(), channels_.end(), channel) != channels_.end()) return;
    channels_.push_back(channel);
  }
  wakeThread();
}

void Listener::onListening(std::function<void()> callback) {
  on_listening_.push_back(std::move(callback));
}

void Listener::onLost(std::function<void(const std::string&)> callback) {
  on_lost_.push_back(std::move(callback));
}

void Listener::start() { thread_ = std::thread([this] { threadMain(); }); }

void Listener::wakeThread() {
  uint64_t one = 1;
  ssize_t unused = write(wake_fd_, &one, sizeof one);
  (void)unused;
}

void Listener::threadMain() {
  auto sleep_or_stop = [this](int ms) {
    std::unique_lock lock(mutex_);
    wait_.wait_for(lock, std::chrono::milliseconds(ms), [this] { return stopping_; });
    return !stopping_;
  };
  std::vector<Notification> arrived;
  for (;;) {
    auto conn = connectWithRetry(conninfo_, "listener", sleep_or_stop);
    if (!conn) return;
    std::vector<std::unique_ptr<Receiver>> receivers;
    std::set<std::string> listened;
    auto listenNewChannels = [&] {
      std::vector<std::string> channels;
      {
        std::lock_guard lock(mutex_);
        channels = channels_;
      }
      for (const auto& ch : channels) {
        if (listened.insert(ch).second) {
          receivers.push_back(std::make_unique<Receiver>(*conn, ch, &arrived));
        }
      }
    };
    try {
      listenNewChannels();
      listening_ = true;
      mailbox_.post([this] {
        for (auto& cb : on_listening_) cb();
      });
      for (;;) {
        // At the bound, stop reading until the loop has drained (it wakes
        // us): the notifications wait in the server's queue, not in memory.
        // paused_ is set before full() is checked again, and the loop
        // drains before it reads paused_, so one of the two sees the other.
        bool pause = full();
        if (pause) {
          paused_ = true;
          pause = full();
          if (!pause) paused_ = false;
        }
        if (pause && ++pauses_ == 1) {
          log::warning("listener", "the loop is ", queued_.load(), " notifications behind; reading waits for it"
                       " (the server queues the rest)");
        }
        pollfd fds[2] = {{pause ? -1 : conn->sock(), POLLIN, 0}, {wake_fd_, POLLIN, 0}};
        if (poll(fds, 2, -1) < 0 && errno != EINTR) throw pqxx::broken_connection("poll failed");
        if (fds[1].revents & POLLIN) {
          uint64_t count;
          ssize_t unused = read(wake_fd_, &count, sizeof count);
          (void)unused;
          {
            std::lock_guard lock(mutex_);
            if (stopping_) break;
          }
          listenNewChannels();
        }
        if (fds[0].revents) {
          conn->get_notifs();
          if (!conn->is_open()) throw pqxx::broken_connection("connection closed");
        }
        if (!arrived.empty()) {
          size_t bytes = 0;
          for (const auto& n : arrived) bytes += n.payload.size();
          const size_t now = queued_ += arrived.size();
          queued_bytes_ += bytes;
          if (now > queued_high_) queued_high_ = now;
          mailbox_.post([this, bytes, batch = std::move(arrived)] {
            for (const auto& n : batch) {
              auto it = handlers_.find(n.channel);
              if (it == handlers_.end()) continue;
              for (auto& h : it->second) h(n.payload);
            }
            queued_ -= batch.size();
            queued_bytes_ -= bytes;
            if (paused_.exchange(false)) wakeThread();
          });
          arrived.clear();
        }
      }
      listening_ = false;
      return;  // stopping
    } catch (const std::exception& e) {
      listening_ = false;
      log::warning("listener", "lost the LISTEN connection (", e.what(), "); reconnecting");
      mailbox_.post([this, why = std::string(e.what())] {
        for (auto& cb : on_lost_) cb(why);
      });
    }
    // Receivers die before their connection; their UNLISTEN on a dead
    // connection is caught inside libpqxx.
    receivers.clear();
    conn.reset();
    if (!sleep_or_stop(100)) return;
  }
}

}  // namespace pefnos::db
