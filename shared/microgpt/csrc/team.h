// The native decode step's own threads, and how they share a step's work.
//
// A step is a sequence of phases (a product, the attention of every head, the norms of every
// row), each a number of independent items. Every thread of the team runs the same program.
// At each phase a thread works through its own contiguous share of the items, then claims what
// is left of the others' shares, then waits until every item of the phase is done, by
// whichever thread. A thread the OS puts aside therefore holds up a phase by at most the few
// items it has claimed, never by its whole share: on a machine whose other core is busy (a
// server's event loop, a load-test client) a step runs at about one thread's speed instead of
// stalling at every phase for a thread that is not running. For the same reason a worker may
// join a step late (it skips the phases already done) or not at all, and the caller never
// waits for one to wake up.
//
// Why not OpenMP: libgomp's workers sleep in futexes between parallel regions as soon as the
// process holds more OpenMP threads than cores (a server does), its static schedules wait for
// every thread, and a region cannot start before all its threads do. A `Team`'s workers stay
// awake for a moment after a step (spinning, then yielding their core to any thread that wants
// it) and sleep after an idle spell, so an idle server costs nothing.
//
// Items write disjoint outputs, so a result is the same bits whichever thread computes it.
#pragma once

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#if defined(__x86_64__)
#include <immintrin.h>
inline void spin_pause() { _mm_pause(); }
#else
inline void spin_pause() {}
#endif

// A waiter spins this many pauses (about 20 us), then yields its core until the thing it waits
// for happens: most waits inside a step are shorter, and a longer spin takes the core from the
// threads that run between steps (the engine's own Python, the event loop): with 4,000 pauses
// an HTTP single stream decoded 8% fewer tokens a second; with 100, the step itself slowed.
constexpr int SPIN_PAUSES = 400;

template <typename Ready>
void wait_until(const Ready& ready) {
  for (int spins = 0; !ready(); spins++) {
    if (spins < SPIN_PAUSES) spin_pause();
    else sched_yield();
  }
}

// One thread's share of one phase: its next unclaimed item (counted from the share's first) and
// the items of the share done, on a cache line of its own.
struct alignas(64) Share {
  std::atomic<int64_t> next{0}, done{0};
};

// One thread's walk through a step's phases. A phase's n items are split into `size` contiguous
// shares, one per thread (a static schedule: each thread's claims stay on its own cache line);
// a thread that has finished its share claims what is left of the others', so a thread that is
// not running holds up the phase by at most the chunk it has claimed.
class Member {
 public:
  Member(Share* shares, int64_t phases, int size, int rank)
      : shares_(shares), phases_(phases), size_(size), rank_(rank) {}

  // item(i) for the items i in [0, n) this thread claims; returns once all n are done.
  template <typename Item>
  void each(int64_t n, const Item& item) {
    if (at_ >= phases_) {  // the step's program makes more phases than it said: a bug, not bad input
      std::fprintf(stderr, "microgpt native step: more than %lld phases\n", static_cast<long long>(phases_));
      std::abort();
    }
    Share* phase = shares_ + at_++ * size_;
    const int64_t chunk = std::max<int64_t>(1, n / (4 * size_));
    for (int k = 0; k < size_; k++) {  // its own share first, then what is left of the others'
      const int owner = (rank_ + k) % size_;
      const auto [first, last] = range(owner, n);
      Share& share = phase[owner];
      while (first + share.next.load(std::memory_order_relaxed) < last) {
        const int64_t from = first + share.next.fetch_add(chunk, std::memory_order_relaxed);
        const int64_t to = std::min(last, from + chunk);
        for (int64_t i = from; i < to; i++) item(i);
        if (from < to) share.done.fetch_add(to - from, std::memory_order_release);
      }
    }
    for (int owner = 0; owner < size_; owner++) {
      const auto [first, last] = range(owner, n);
      wait_until([&] { return phase[owner].done.load(std::memory_order_acquire) >= last - first; });
    }
  }

 private:
  // Thread `owner`'s share of n items: [first, last).
  std::pair<int64_t, int64_t> range(int owner, int64_t n) const {
    const int64_t per = n / size_, extra = n % size_;
    const int64_t first = owner * per + std::min<int64_t>(owner, extra);
    return {first, first + per + (owner < extra ? 1 : 0)};
  }

  Share* shares_;
  int64_t phases_, at_ = 0;
  int size_, rank_;
};

// Persistent worker threads; `run` hands them one step at a time.
class Team {
 public:
  Team() = default;
  Team(const Team&) = delete;
  Team& operator=(const Team&) = delete;

  ~Team() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
      generation_.fetch_add(1);
    }
    wake_.notify_all();
    for (auto& worker : workers_) worker.join();
  }

  // job(member) on up to `size` threads (the caller is one of them) over `phases` phases;
  // returns when the job is done and no worker is inside it.
  void run(int size, int64_t phases, const std::function<void(Member&)>& job) {
    const int64_t shares = phases * size;
    if (capacity_ < shares) {
      shares_ = std::make_unique<Share[]>(shares);
      capacity_ = shares;
    }
    for (int64_t i = 0; i < shares; i++) {
      shares_[i].next.store(0, std::memory_order_relaxed);
      shares_[i].done.store(0, std::memory_order_relaxed);
    }
    while (int(workers_.size()) < size - 1) {
      const int index = int(workers_.size());
      workers_.emplace_back([this, index, seen = generation_.load()] { work(index, seen); });
    }
    job_ = &job;
    size_ = size;
    count_ = phases;
    const uint64_t generation = generation_.load() + 1;
    open_.store(generation);  // seq_cst, as are `entered_` and the workers' side: see `enter`
    generation_.store(generation);  // publishes job_, size_, count_ and the reset phases
    if (size > 1 && sleepers_.load() > 0) {
      std::lock_guard<std::mutex> lock(mutex_);  // a worker going to sleep holds it until it waits
      wake_.notify_all();
    }
    Member me(shares_.get(), phases, size, 0);
    job(me);
    open_.store(0);  // closed: a worker that comes now finds nothing to do
    wait_until([&] { return entered_.load() == 0; });
  }

 private:
  // Idle this long (spinning, then yielding) before sleeping: longer than a server's pause between
  // decode steps, short enough that an idle process goes quiet at once.
  static constexpr auto IDLE = std::chrono::milliseconds(2);

  void work(int index, uint64_t seen) {
    for (;;) {
      seen = wait_for_job(seen);
      if (stop_) return;
      if (index + 1 < size_ && enter(seen)) {
        Member me(shares_.get(), count_, size_, index + 1);
        (*job_)(me);
        entered_.fetch_sub(1);
      }
    }
  }

  // Whether the job of `generation` is still open; if so, this worker is counted inside it until
  // it leaves. (The caller closes, then waits for the count to be 0; a worker counts itself, then
  // checks it is open: with sequentially consistent atomics one of the two sees the other.)
  bool enter(uint64_t generation) {
    entered_.fetch_add(1);
    if (open_.load() == generation) return true;
    entered_.fetch_sub(1);
    return false;
  }

  // The generation after `seen`, once it is published.
  uint64_t wait_for_job(uint64_t seen) {
    const auto start = std::chrono::steady_clock::now();
    for (int spins = 0; generation_.load() == seen; spins++) {
      if (spins < SPIN_PAUSES) {
        spin_pause();
        continue;
      }
      if (std::chrono::steady_clock::now() - start < IDLE) {
        sched_yield();
        continue;
      }
      std::unique_lock<std::mutex> lock(mutex_);
      sleepers_.fetch_add(1);
      wake_.wait(lock, [&] { return generation_.load() != seen; });
      sleepers_.fetch_sub(1);
    }
    return generation_.load();
  }

  std::vector<std::thread> workers_;
  std::unique_ptr<Share[]> shares_;
  int64_t capacity_ = 0;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::atomic<uint64_t> generation_{0}, open_{0};
  std::atomic<int> entered_{0}, sleepers_{0};
  const std::function<void(Member&)>* job_ = nullptr;
  std::atomic<int> size_{1};
  int64_t count_ = 0;
  bool stop_ = false;
};
