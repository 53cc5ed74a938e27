#include "core/builds/logs.h"

#include <pqxx/pqxx>

namespace pefnos::builds {

LogWriter::LogWriter(uv_loop_t* loop, db::Database& db, size_t budget)
    : loop_(loop), db_(db), budget_(budget), timer_(loop) {}

LogWriter::~LogWriter() { *alive_ = false; }

bool LogWriter::append(long long step_id, const char* stream, std::string_view bytes) {
  if (bytes.empty()) return buffered_ <= budget_;
  buffered_ += bytes.size();
  auto& log = steps_[step_id];
  // Appended to the last waiting chunk of the same stream while it has room.
  if (!log.chunks.empty() && log.chunks.back().stream == stream &&
      log.chunks.back().data.size() + bytes.size() <= kChunk) {
    log.chunks.back().data.append(bytes);
  } else {
    while (!bytes.empty()) {
      size_t n = std::min(bytes.size(), kChunk);
      log.chunks.push_back({stream, std::string(bytes.substr(0, n))});
      bytes.remove_prefix(n);
    }
  }
  if (!timer_.active() && !flushing_) timer_.start(kFlushMs, 0, [this] { flush(); });
  return buffered_ <= budget_;
}

void LogWriter::flushStep(long long step_id, std::function<void(Status)> done) {
  auto it = steps_.find(step_id);
  if (it == steps_.end()) return done(ok());  // it printed nothing
  // The step has ended: once its last rows are in, it is forgotten.
  it->second.waiters.push_back([this, step_id, done = std::move(done)](Status s) {
    // Forgotten once nothing of it waits; a late line keeps it (and its seq) until written.
    auto it = steps_.find(step_id);
    if (it != steps_.end() && it->second.chunks.empty()) steps_.erase(it);
    done(std::move(s));
  });
  if (!flushing_) {
    timer_.stop();
    flush();
  }
}

void LogWriter::flush() {
  if (flushing_) return;
  struct Row {
    long long step;
    int seq;
    std::string stream, data;
  };
  auto rows = std::make_shared<std::vector<Row>>();
  std::vector<std::pair<long long, std::vector<std::function<void(Status)>>>> waiting;
  size_t bytes = 0;
  for (auto& [step, log] : steps_) {
    for (auto& c : log.chunks) {
      bytes += c.data.size();
      rows->push_back({step, log.next_seq++, std::move(c.stream), std::move(c.data)});
    }
    log.chunks.clear();
    if (!log.waiters.empty()) waiting.emplace_back(step, std::move(log.waiters));
    log.waiters.clear();
  }
  if (rows->empty()) {
    for (auto& [step, fns] : waiting)
      for (auto& fn : fns) fn(ok());
    return;
  }
  flushing_ = true;
  std::weak_ptr<bool> alive = alive_;
  db_.transact<size_t>(
      [rows](pqxx::work& tx) {
        for (const auto& r : *rows) {
          tx.exec_params("INSERT INTO pefnos.log (step_id, seq, stream, data) VALUES ($1, $2, $3, $4)",
                         r.step, r.seq, r.stream, pqxx::binarystring(r.data.data(), r.data.size()));
        }
        return rows->size();
      },
      [this, alive, bytes, waiting = std::move(waiting)](Result<size_t> written) mutable {
        if (alive.expired()) return;
        flushing_ = false;
        buffered_ -= std::min(buffered_, bytes);
        if (written) stored_ += bytes;
        Status s = written ? ok() : Status(written.error());
        for (auto& [step, fns] : waiting)
          for (auto& fn : fns) fn(s);
        bool more = false;
        for (auto& [step, log] : steps_) more = more || !log.chunks.empty() || !log.waiters.empty();
        if (more) {
          // Waiters want it now; otherwise give the next chunk time to fill.
          bool urgent = false;
          for (auto& [step, log] : steps_) urgent = urgent || !log.waiters.empty() || buffered_ > budget_ / 2;
          if (urgent) flush();
          else timer_.start(kFlushMs, 0, [this] { flush(); });
        }
        if (buffered_ <= budget_ / 2 && drained_) drained_();
      },
      db::Retry::on_reconnect);
}

}  // namespace pefnos::builds
