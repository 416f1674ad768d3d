// The few c10d calls dsno needs, with a C interface for src/comm/mod.rs: a TCPStore (server on
// rank 0, or a client of a store that already exists, e.g. torchrun's agent store), a process
// group (ProcessGroupGloo for CPU tensors, ProcessGroupNCCL for CUDA tensors), in-place
// all-reduce (sum), broadcast and barrier. Built by build.rs against the pinned libtorch wheel's
// headers; the backends are those of libtorch itself (libtorch_cpu, libtorch_cuda).
//
// Every function catches C++ exceptions and returns them as a message (malloc'd; free it with
// dsno_comm_free_string); tensors are tch's `at::Tensor*` handles.
#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
  int device;  // CUDA device index of an NCCL group, -1 for Gloo
};

char* copy(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p != nullptr) {
    std::memcpy(p, s.c_str(), s.size() + 1);
  }
  return p;
}

// Runs `f`; on an exception stores its message in *err and returns 1.
template <class F>
int guarded(char** err, F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    *err = copy(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = copy(e.what());
  } catch (...) {
    *err = copy("unknown C++ exception");
  }
  return 1;
}

void wait(Group* g, const c10::intrusive_ptr<c10d::Work>& work) {
  if (!work->wait(g->timeout)) {
    throw std::runtime_error("collective timed out");
  }
}

}  // namespace

extern "C" {

// Bit 0: Gloo compiled in; bit 1: NCCL compiled in.
int dsno_comm_backends() {
  int b = 0;
#ifdef USE_C10D_GLOO
  b |= 1;
#endif
#ifdef USE_C10D_NCCL
  b |= 2;
#endif
  return b;
}

// A process group of `world` ranks meeting at host:port. `server`: this process hosts the
// TCPStore (rank 0 of a plain launch); otherwise it connects to it. `prefix` namespaces the keys
// (a store shared with a launcher). backend 0: Gloo over `interfaces` (comma-separated names;
// empty: loopback when `host` is a loopback address, else this machine's default address);
// 1: NCCL on CUDA device `device`. Returns null and sets *err on failure.
void* dsno_comm_new(const char* host, int port, int rank, int world, int server,
                    const char* prefix, long long timeout_ms, int backend, int device,
                    const char* interfaces, char** err) {
  Group* out = nullptr;
  guarded(err, [&] {
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions so;
    so.port = static_cast<uint16_t>(port);
    so.isServer = server != 0;
    so.numWorkers = world;
    so.waitWorkers = true;  // clients count themselves in; the server waits for all
    so.timeout = timeout;
    c10::intrusive_ptr<c10d::Store> store = c10::make_intrusive<c10d::TCPStore>(host, so);
    if (prefix != nullptr && prefix[0] != '\0') {
      store = c10::make_intrusive<c10d::PrefixStore>(prefix, store);
    }
    c10::intrusive_ptr<c10d::Backend> pg;
    if (backend == 0) {
#ifdef USE_C10D_GLOO
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      std::string h(host);
      std::string ifs(interfaces != nullptr ? interfaces : "");
      if (!ifs.empty()) {
        // GLOO_SOCKET_IFNAME: the interfaces to use, comma-separated (PyTorch's convention)
        size_t at = 0;
        while (at <= ifs.size()) {
          size_t end = ifs.find(',', at);
          if (end == std::string::npos) end = ifs.size();
          if (end > at) {
            opts->devices.push_back(
                c10d::ProcessGroupGloo::createDeviceForInterface(ifs.substr(at, end - at)));
          }
          at = end + 1;
        }
      } else if (h == "localhost" || h == "::1" || h.rfind("127.", 0) == 0) {
        // every rank on this machine: the loopback interface
        opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(h));
      } else {
        // this machine's own address (its hostname's), as PyTorch's default device
        opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(
          c10::make_intrusive<c10d::PrefixStore>("gloo/", store), rank, world, opts);
#else
      throw std::runtime_error("this build of dsno has no Gloo backend (see build.rs)");
#endif
    } else {
#ifdef USE_C10D_NCCL
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(
          c10::make_intrusive<c10d::PrefixStore>("nccl/", store), rank, world, opts);
#else
      throw std::runtime_error("this build of dsno has no NCCL backend (see build.rs)");
#endif
    }
    out = new Group{store, pg, timeout, backend == 0 ? -1 : device};
  });
  return out;
}

// Shuts the group down (NCCL's communicators are destroyed, as destroy_process_group does) and
// frees it.
void dsno_comm_free(void* g) {
  auto* grp = static_cast<Group*>(g);
  if (grp == nullptr) {
    return;
  }
  try {
    grp->backend->shutdown();
  } catch (...) {
    // a group whose peers are gone cannot shut down cleanly; it is freed all the same
  }
  delete grp;
}

void dsno_comm_free_string(char* s) { std::free(s); }

// In-place sum of `tensor` (an at::Tensor*, contiguous) over the group.
int dsno_comm_all_reduce_sum(void* g, void* tensor, char** err) {
  return guarded(err, [&] {
    auto* grp = static_cast<Group*>(g);
    std::vector<at::Tensor> ts{*static_cast<at::Tensor*>(tensor)};
    c10d::AllreduceOptions o;
    o.reduceOp = c10d::ReduceOp::SUM;
    o.timeout = grp->timeout;
    wait(grp, grp->backend->allreduce(ts, o));
  });
}

// In-place broadcast of `tensor` from rank `root`.
int dsno_comm_broadcast(void* g, void* tensor, int root, char** err) {
  return guarded(err, [&] {
    auto* grp = static_cast<Group*>(g);
    std::vector<at::Tensor> ts{*static_cast<at::Tensor*>(tensor)};
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.rootTensor = 0;
    o.timeout = grp->timeout;
    wait(grp, grp->backend->broadcast(ts, o));
  });
}

// Returns when every rank has called it (or fails after the group's timeout).
int dsno_comm_barrier(void* g, char** err) {
  return guarded(err, [&] {
    auto* grp = static_cast<Group*>(g);
    c10d::BarrierOptions o;
    o.timeout = grp->timeout;
    if (grp->device >= 0) {
      o.device_ids = {static_cast<int64_t>(grp->device)};
    }
    wait(grp, grp->backend->barrier(o));
  });
}

}  // extern "C"
