// Operator schemas of the seqedit namespace and the Python module that loads them.
// Kernels live in csrc/cpu/*.cpp (TORCH_LIBRARY_IMPL(seqedit, CPU, m)) and
// csrc/cuda/*.cu (TORCH_LIBRARY_IMPL(seqedit, CUDA, m)); Python wrappers with input
// validation and fake-tensor registrations are in python/seqedit/ops.py.
#include <Python.h>
#include <torch/library.h>

TORCH_LIBRARY(seqedit, m) {
  // acc[d,d] += sum_i w_i k_i k_i^T; acc float32/float64, keys float32/bfloat16/float16.
  m.def("second_moment_(Tensor(a!) acc, Tensor keys, Tensor? weights) -> ()");
  m.def("second_moment_list_(Tensor(a!)[] accs, Tensor[] keys, Tensor?[] weights) -> ()");
  // W += alpha * U V^T (or W += alpha * V U^T when transposed, i.e. W stored [in,out]).
  // Returns float64 [3] = (sum|W_new|, sum|dW|, ||dW||_F^2) when stats, else an empty tensor.
  m.def("rank_update_(Tensor(a!) weight, Tensor u, Tensor v, float alpha, bool transposed, bool stats) -> Tensor");
  m.def("rank_update_list_(Tensor(a!)[] weights, Tensor[] us, Tensor[] vs, float[] alphas, bool[] transposed, bool stats) -> Tensor[]");
  // Top-k singular triplets (S[...,k], U[...,m,k], V[...,n,k]) of a[...,m,n].
  m.def("top_singular(Tensor a, int k, float tol, int max_iter, int seed) -> (Tensor, Tensor, Tensor)");
  // Exact top-k singular triplets of A = U V^T from its factors.
  m.def("top_singular_factored(Tensor u, Tensor v, int k) -> (Tensor, Tensor, Tensor)");
}

namespace {
PyModuleDef seqedit_module = {PyModuleDef_HEAD_INIT, "_C",
                              "seqedit C++/CUDA operators (registered under torch.ops.seqedit)",
                              -1, nullptr};
}  // namespace

PyMODINIT_FUNC PyInit__C() {
  PyObject* module = PyModule_Create(&seqedit_module);
  if (module == nullptr) return nullptr;
#ifdef SEQEDIT_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(module, "WITH_CUDA", with_cuda) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
