#include <algorithm>

#include "core/base/log.h"
#include "core/db/db.h"

namespace pefnos::db {

std::unique_ptr<pqxx::connection> connectWithRetry(
    const std::string& conninfo, const std::string& who,
    const std::function<bool(int ms)>& sleep_or_stop) {
  int delay_ms = 100;
  for (int attempt = 1;; ++attempt) {
    try {
      auto conn = std::make_unique<pqxx::connection>(conninfo);
      if (attempt > 1) log::info(who, "connected to the database after ", attempt, " attempts");
      return conn;
    } catch (const std::exception& e) {
      std::string why = e.what();
      while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
      std::replace(why.begin(), why.end(), '\n', ' ');
      log::warning(who, "database unreachable (", why, "); retrying in ", delay_ms, " ms");
    }
    if (!sleep_or_stop(delay_ms)) return nullptr;
    delay_ms = std::min(delay_ms * 2, 5000);
  }
}

Database::Database(uv_loop_t* loop, Options options)
    : options_(std::move(options)), mailbox_(loop) {
  running_.assign(options_.connections, nullptr);
  for (int i = 0; i < options_.connections; ++i) threads_.emplace_back([this, i] { threadMain(i); });
}

Database::~Database() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    for (pqxx::connection* c : running_) {
      if (c == nullptr) continue;
      try {
        c->cancel_query();
      } catch (const std::exception&) {
        // The connection is going away anyway.
      }
    }
  }
  wake_.notify_all();
  for (auto& t : threads_) t.join();
}

void Database::submit(Job job) {
  ++pending_;
  {
    std::lock_guard lock(mutex_);
    queue_.push_back(std::move(job));
  }
  wake_.notify_one();
}

void Database::threadMain(int index) {
  const std::string who = options_.name + "[" + std::to_string(index) + "]";
  auto sleep_or_stop = [this](int ms) {
    std::unique_lock lock(mutex_);
    wake_.wait_for(lock, std::chrono::milliseconds(ms), [this] { return stopping_; });
    return !stopping_;
  };
  std::unique_ptr<pqxx::connection> conn;
  for (;;) {
    if (!conn) {
      conn = connectWithRetry(options_.conninfo, who, sleep_or_stop);
      if (!conn) return;
      ++connected_threads_;
    }
    Job job;
    {
      std::unique_lock lock(mutex_);
      wake_.wait(lock, [this] { return stopping_ || !queue_.empty(); });
      if (stopping_) break;
      job = std::move(queue_.front());
      queue_.pop_front();
      running_[index] = conn.get();
    }
    bool broken = false;
    try {
      job.run(*conn);
    } catch (const pqxx::broken_connection& e) {
      broken = true;
      job.fail(Error{std::string("lost the database connection: ") + e.what()});
    } catch (const std::exception& e) {
      job.fail(Error{e.what()});
    }
    {
      std::lock_guard lock(mutex_);
      running_[index] = nullptr;
    }
    // libpqxx may report a dead server as a plain sql_error: trust is_open().
    if (!broken && !conn->is_open()) broken = true;
    if (broken) {
      log::warning(who, "lost the database connection; reconnecting");
      conn.reset();
      --connected_threads_;
      if (job.retry == Retry::on_reconnect) {
        std::lock_guard lock(mutex_);
        queue_.push_front(std::move(job));
        continue;
      }
    }
    mailbox_.post([this, deliver = std::move(job.deliver)] {
      --pending_;
      deliver();
    });
  }
  if (conn) --connected_threads_;
}

}  // namespace pefnos::db
