// Step output on its way into pefnos.log: appended as it arrives, written in
// chunks (at most kChunk bytes per row, at least every kFlushMs), one
// transaction per flush, rows numbered per step in arrival order.
//
// Memory is bounded by the budget: append() says when the buffered bytes
// (waiting + being written) exceed it, and the caller stops reading from the
// worker until onDrained runs. Nothing is dropped: a slow database slows the
// workers down instead.
#pragma once

#include <uv.h>

#include <functional>
#include <map>
#include <string>

#include "core/db/db.h"
#include "core/loop/loop.h"

namespace pefnos::builds {

class LogWriter {
 public:
  static constexpr size_t kChunk = 256u << 10;
  static constexpr uint64_t kFlushMs = 100;

  LogWriter(uv_loop_t* loop, db::Database& db, size_t budget);
  ~LogWriter();
  LogWriter(const LogWriter&) = delete;
  LogWriter& operator=(const LogWriter&) = delete;

  // Queues bytes of a step's stream ("out" or "err"). Returns false when the
  // budget is exceeded: stop reading until onDrained.
  bool append(long long step_id, const char* stream, std::string_view bytes);
  // Everything appended for step so far is stored when done runs.
  void flushStep(long long step_id, std::function<void(Status)> done);
  void onDrained(std::function<void()> fn) { drained_ = std::move(fn); }
  size_t buffered() const { return buffered_; }
  uint64_t stored() const { return stored_; }

 private:
  struct Pending {
    std::string stream, data;
  };
  struct StepLog {
    int next_seq = 0;
    std::vector<Pending> chunks;  // waiting, in order
    std::vector<std::function<void(Status)>> waiters;
  };
  void flush();

  uv_loop_t* loop_;
  db::Database& db_;
  size_t budget_;
  size_t buffered_ = 0;
  uint64_t stored_ = 0;
  bool flushing_ = false;
  std::map<long long, StepLog> steps_;
  loop::Timer timer_;
  std::function<void()> drained_;
  std::shared_ptr<bool> alive_ = std::make_shared<bool>(true);
};

}  // namespace pefnos::builds
