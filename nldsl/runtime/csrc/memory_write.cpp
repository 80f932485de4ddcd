// The fused chunk-end write of a two-layer memory (nldsl/runtime/fused.py says when it runs).
//
// One problem is one (sequence, head) of a level: weights W1 (h, d_in), W2 (d_out, h), momentum
// S1, S2 of the same shapes, the chunk's keys K (n, d_in) and values V (n, d_out). The chunk's
// gate coefficients come in from PyTorch: A (the retention product A_n), m (m_n), B (B_n) and the
// per-token write weights c_s = −γ_{n,s} η_s and c'_s = −(B_n/B_s) η_s. Forward, per problem:
//
//   Z = K W1ᵀ, H = σ(Z), Y = H W2ᵀ, P = Y + [residual] K               (the memory on the keys)
//   T = σ(V W1ᵀ) W2ᵀ + [residual] V  if the values are generated, else V
//   G = P − T                                                          (the L2 error)
//   D2 = G + [dgd on layer 2] Y,   D1 = σ'(Z) ⊙ (G W2) + [dgd on layer 1] Z
//   W1' = A W1 + m S1 + Σ_s c_s D1_sᵀ K_s,   S1' = B S1 + Σ_s c'_s D1_sᵀ K_s
//   W2' = A W2 + m S2 + Σ_s c_s D2_sᵀ H_s,   S2' = B S2 + Σ_s c'_s D2_sᵀ H_s
//
// A clipped level (clip > 0) scales both write weights of token s by ρ_s = min(1, clip / ‖∇ℓ_s‖), the norm of its
// inner gradient over both layers before the DGD terms: ‖∇ℓ_s‖² = ‖U1_s‖²‖K_s‖² + ‖G_s‖²‖H_s‖², U1 = σ'(Z) ⊙ (G W2)
// (memory.clip_scale; each stacked memory has its own ρ).
//
// and the backward is the same chain run in reverse by hand. A training call (kSave) also returns the
// forward's product results that chain reads (Saved), so the backward repeats none of its products.
// Optionally the call also reads the next chunk's rows X at the new weights, R = M_θ'(X), while
// they are in cache, so the caller's next chunk body needs no weight-sized tensor. Memories that
// share their inputs (HOPE's M_k, M_v, M_η, M_α) stack along the head dim and take keys, values
// and gates once per (sequence, head).
// Matrices are row-major and contiguous. Every product runs through one register-blocked
// micro-kernel (product_block) over ATen's vector type; products with a weight's transpose
// transpose it once when it is small, and take dot products of its rows when it is not.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>
#include <torch/library.h>

#include <cmath>
#include <optional>
#include <vector>

namespace {

constexpr int64_t kResidual = 1;
constexpr int64_t kGenerated = 2;
constexpr int64_t kDgdFirst = 4;
constexpr int64_t kDgdSecond = 8;
constexpr int64_t kActivationShift = 4;  // bits 4-5: 0 silu, 1 gelu, 2 relu, 3 tanh
constexpr int64_t kSave = 64;            // bit 6: return the forward's intermediates for the backward

using at::vec::Vectorized;

// C[i, j] = c(i·N + j) + Σ_k a(i, k) B[k, j] for i < M, j < N, where a(i, k) = A[i·row + k·col] and c gives the
// vector of C's starting values at an offset (C's own, LoadC, for C +=). The micro-kernel holds an MR × NV block
// of C in vector registers across the whole k loop: MR·NV independent FMA chains hide the FMA latency, each
// loaded vector of B serves MR rows, and each a(i, k) is broadcast straight from memory.
template <typename T, int MR, int NV, typename Start>
inline void product_block(T* __restrict C, const T* __restrict A, int64_t row, int64_t col, const T* __restrict B,
                          int64_t i, int64_t K, int64_t N, int64_t j, const Start& start) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec acc[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = start((i + r) * N + j + v * V);
  for (int64_t k = 0; k < K; ++k) {
    Vec b[NV];
    for (int v = 0; v < NV; ++v) b[v] = Vec::loadu(B + k * N + j + v * V);
    for (int r = 0; r < MR; ++r) {
      const Vec a(A[(i + r) * row + k * col]);
      for (int v = 0; v < NV; ++v) acc[r][v] = at::vec::fmadd(a, b[v], acc[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v].store(C + (i + r) * N + j + v * V);
}

template <typename T>
struct LoadC {
  const T* C;
  Vectorized<T> operator()(int64_t at) const { return Vectorized<T>::loadu(C + at); }
};

// Strips of NV vectors from column j on while they fit (j is left past them): MR rows at a time, and the
// leftover rows one at a time.
template <typename T, int MR, int NV, typename Start>
inline void product_strips(T* C, const T* A, int64_t row, int64_t col, const T* B, int64_t M, int64_t K, int64_t N,
                           int64_t& j, const Start& start) {
  constexpr int64_t W = NV * Vectorized<T>::size();
  for (; j + W <= N; j += W) {
    int64_t i = 0;
    for (; i + MR <= M; i += MR) product_block<T, MR, NV>(C, A, row, col, B, i, K, N, j, start);
    for (; i < M; ++i) product_block<T, 1, NV>(C, A, row, col, B, i, K, N, j, start);
  }
}

// The vector strips of a product, j left at the first column they leave over (N itself when N is a whole
// number of vectors).
template <typename T, typename Start>
inline void product_vectors(T* __restrict C, const T* __restrict A, int64_t row, int64_t col, const T* __restrict B,
                            int64_t M, int64_t K, int64_t N, int64_t& j, const Start& start) {
  // 4 × 4 blocks (2 × 4 before, with a(i, k)·w_k in the loop): at HOPE's projections of width 256, with the
  // tiled transpose below, the op's forward 1.43× and forward + backward 1.30× faster in float32
  // (`python -m bench kernel 2210f8e <this commit>`, 60 rounds; the blocking alone about 1.1×)
  product_strips<T, 4, 4>(C, A, row, col, B, M, K, N, j, start);
  product_strips<T, 4, 2>(C, A, row, col, B, M, K, N, j, start);
  product_strips<T, 8, 1>(C, A, row, col, B, M, K, N, j, start);
}

template <typename T>
inline void product(T* __restrict C, const T* __restrict A, int64_t row, int64_t col, const T* __restrict B,
                    int64_t M, int64_t K, int64_t N) {
  int64_t j = 0;
  product_vectors(C, A, row, col, B, M, K, N, j, LoadC<T>{C});
  for (; j < N; ++j)  // columns left over from the vectors
    for (int64_t i = 0; i < M; ++i) {
      T sum = C[i * N + j];
      for (int64_t k = 0; k < K; ++k) sum += A[i * row + k * col] * B[k * N + j];
      C[i * N + j] = sum;
    }
}

// C (M×N) = start + Aᵀ · B for A (K×M), B (K×N), N a whole number of vectors (start as in product_block):
// mm_tn with C's elementwise start computed in the block's registers rather than in a pass of its own.
template <typename T, typename Start>
inline void mm_tn_from(T* C, const Start& start, const T* A, const T* B, int64_t M, int64_t K, int64_t N) {
  int64_t j = 0;
  product_vectors(C, A, 1, M, B, M, K, N, j, start);
  TORCH_CHECK(j == N, "mm_tn_from: N must be a whole number of vectors");
}

// C (M×N) += A (M×K) · B (K×N)
template <typename T>
inline void mm_nn(T* C, const T* A, const T* B, int64_t M, int64_t K, int64_t N) {
  product(C, A, K, 1, B, M, K, N);
}

// C (M×N) += Aᵀ · B for A (K×M), B (K×N): a sum of K outer products
template <typename T>
inline void mm_tn(T* C, const T* A, const T* B, int64_t M, int64_t K, int64_t N) {
  product(C, A, 1, M, B, M, K, N);
}

// C (M×N) += Σ_k w_k A_kᵀ B_k, and C2 += Σ_k w2_k A_kᵀ B_k when C2 is given: one layer's writes to θ and S.
// A (K×M, the small one) is scaled by w first, so the micro-kernel's inner loop multiplies nothing but B.
template <typename T>
inline void weighted_outer_sums(T* C, T* C2, const T* w, const T* w2, const T* A, const T* B, int64_t M, int64_t K,
                                int64_t N) {
  thread_local std::vector<T> scaled;
  scaled.resize(K * M);
  for (int64_t k = 0; k < K; ++k)
    for (int64_t i = 0; i < M; ++i) scaled[k * M + i] = w[k] * A[k * M + i];
  mm_tn(C, scaled.data(), B, M, K, N);
  if (C2 == nullptr) return;
  for (int64_t k = 0; k < K; ++k)
    for (int64_t i = 0; i < M; ++i) scaled[k * M + i] = w2[k] * A[k * M + i];
  mm_tn(C2, scaled.data(), B, M, K, N);
}

// One layer's new weight and momentum: W' = A W + m S + Σ_s c_s D_sᵀ X_s, S' = B S + Σ_s c'_s D_sᵀ X_s (S and S'
// null without momentum) for errors D (n × rows) on inputs X (n × cols). Where cols is a whole number of vectors
// each is one product that starts its blocks from A W + m S (or B S) in registers, so W' and S' are written
// once, not written by an elementwise pass and then loaded and stored again by the product's blocks (the same
// arithmetic: the pass's A·W + (m·S) is one fmadd, as the compiler contracted it).
template <typename T>
inline void new_weights(T* Wo, T* So, const T* W, const T* S, T A, T M, T B, const T* c, const T* c2, const T* D,
                        const T* X, int64_t rows, int64_t n, int64_t cols) {
  using Vec = Vectorized<T>;
  const int64_t size = rows * cols;
  if (cols % Vec::size() != 0) {
    if (S != nullptr)
      for (int64_t i = 0; i < size; ++i) Wo[i] = A * W[i] + M * S[i], So[i] = B * S[i];
    else
      for (int64_t i = 0; i < size; ++i) Wo[i] = A * W[i];
    weighted_outer_sums(Wo, So, c, c2, D, X, rows, n, cols);
    return;
  }
  thread_local std::vector<T> scaled;
  scaled.resize(n * rows);
  for (int64_t k = 0; k < n; ++k)
    for (int64_t i = 0; i < rows; ++i) scaled[k * rows + i] = c[k] * D[k * rows + i];
  const Vec a(A), m(M), b(B);
  if (S != nullptr)
    mm_tn_from(Wo, [&](int64_t at) { return at::vec::fmadd(a, Vec::loadu(W + at), m * Vec::loadu(S + at)); },
               scaled.data(), X, rows, n, cols);
  else
    mm_tn_from(Wo, [&](int64_t at) { return a * Vec::loadu(W + at); }, scaled.data(), X, rows, n, cols);
  if (So == nullptr) return;
  for (int64_t k = 0; k < n; ++k)
    for (int64_t i = 0; i < rows; ++i) scaled[k * rows + i] = c2[k] * D[k * rows + i];
  mm_tn_from(So, [&](int64_t at) { return b * Vec::loadu(S + at); }, scaled.data(), X, rows, n, cols);
}

// dst (cols × rows) = srcᵀ for src (rows × cols): ATen's tiled transpose, 16 × 16 tiles in vector registers
// where the build has AVX-512 (float; elementwise otherwise). The elementwise loop it replaces was the
// hottest loop of the forward in `perf` (its strided stores).
template <typename T>
inline void transpose(T* __restrict dst, const T* __restrict src, int64_t rows, int64_t cols) {
  at::vec::transpose_mxn<T>(src, cols, dst, rows, static_cast<int>(rows), static_cast<int>(cols));
}

// The largest B (elements) that mm_nt transposes before an mm_nn: a small matrix transposes in
// L1 at a few cycles an element, while a CMS level's 512 × 128 weight misses cache on every strided
// write (a transpose then cost more than the product), so larger ones are read row by row instead.
constexpr int64_t kTransposeLimit = 8192;

template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t count);

// Products with Bᵀ for one matrix B (rows × cols), C (M × rows) += A (M × cols) · Bᵀ: B transposed once
// into a buffer when it is small (kTransposeLimit), then mm_nn; otherwise dot products of rows.
template <typename T>
struct TransposedRight {
  std::vector<T> buffer;
  const T* matrix = nullptr;
  int64_t rows = 0, cols = 0;
  bool transposed = false;
  explicit TransposedRight(int64_t capacity) : buffer(std::min(capacity, kTransposeLimit)) {}

  void set(const T* B, int64_t b_rows, int64_t b_cols) {
    matrix = B, rows = b_rows, cols = b_cols;
    transposed = rows * cols <= kTransposeLimit;
    if (transposed) transpose(buffer.data(), B, rows, cols);
  }

  void times(T* C, const T* A, int64_t M) {
    if (transposed) {
      mm_nn(C, A, buffer.data(), M, cols, rows);
      return;
    }
    // C (M × rows) += A · Bᵀ as dot products of rows: each row of the big B streams through once and
    // meets every row of the small A, which stays in L1. (Computing Cᵀ = B Aᵀ with mm_nn instead
    // left it a product only M columns wide, fewer than a vector, which ran scalar.)
    for (int64_t j = 0; j < rows; ++j) {
      const T* b = matrix + j * cols;
      for (int64_t i = 0; i < M; ++i) C[i * rows + j] += dot(A + i * cols, b, cols);
    }
  }
};

// dot's ending: the lanes of its vector sum acc in order, then the products a[i] b[i] past the last whole vector
template <typename T>
inline T dot_end(const Vectorized<T>& acc, const T* __restrict a, const T* __restrict b, int64_t i, int64_t count) {
  constexpr int64_t V = Vectorized<T>::size();
  T lanes[V];
  acc.store(lanes);
  T sum = 0;
  for (int64_t v = 0; v < V; ++v) sum += lanes[v];
  for (; i < count; ++i) sum += a[i] * b[i];
  return sum;
}

template <typename T>
inline T dot(const T* __restrict a, const T* __restrict b, int64_t count) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  Vec acc(T(0));
  int64_t i = 0;
  for (; i + V <= count; i += V) acc = at::vec::fmadd(Vec::loadu(a + i), Vec::loadu(b + i), acc);
  return dot_end(acc, a, b, i, count);
}

// E·W, E·S and F·S for one weight W, its momentum S and the gradients E, F of the new ones, each summed
// exactly as dot sums it, and ∂S = m E + B F into GS, in one pass over the four (they were two elementwise
// passes and three dots, each reading its operands anew). F null: E·W alone.
template <typename T>
inline void decay_dots(const T* __restrict E, const T* __restrict F, const T* __restrict W, const T* __restrict S,
                       int64_t count, T& ew, T& es, T& fs, T M, T B, T* __restrict GS) {
  using Vec = Vectorized<T>;
  constexpr int64_t V = Vec::size();
  if (F == nullptr) {
    ew = dot(E, W, count);
    return;
  }
  // ∂S: m·E + (B·F) is one fmadd, as the compiler contracted the elementwise pass it replaces
  const Vec m(M), b(B);
  Vec acc_ew(T(0)), acc_es(T(0)), acc_fs(T(0));
  int64_t i = 0;
  for (; i + V <= count; i += V) {
    const Vec e = Vec::loadu(E + i), s = Vec::loadu(S + i), f = Vec::loadu(F + i);
    at::vec::fmadd(m, e, b * f).store(GS + i);
    acc_ew = at::vec::fmadd(e, Vec::loadu(W + i), acc_ew);
    acc_es = at::vec::fmadd(e, s, acc_es);
    acc_fs = at::vec::fmadd(f, s, acc_fs);
  }
  for (int64_t t = i; t < count; ++t) GS[t] = M * E[t] + B * F[t];
  ew = dot_end(acc_ew, E, W, i, count);
  es = dot_end(acc_es, E, S, i, count);
  fs = dot_end(acc_fs, F, S, i, count);
}

// σ(z), σ'(z) and (when second is not null) σ''(z) of the activation, elementwise; silu, the one
// HOPE uses, runs on vectors (Sleef's exp, as PyTorch's own CPU kernels)
template <typename T>
void activate(int64_t kind, const T* __restrict z, T* __restrict value, T* __restrict first, T* __restrict second,
              int64_t count) {
  switch (kind) {
    case 0: {  // silu: z s(z)
      using Vec = Vectorized<T>;
      constexpr int64_t V = Vec::size();
      const Vec one(T(1)), two(T(2));
      int64_t i = 0;
      for (; i + V <= count; i += V) {
        const Vec x = Vec::loadu(z + i);
        const Vec s = one / (one + x.neg().exp());
        (x * s).store(value + i);
        (s * (one + x * (one - s))).store(first + i);
        if (second) (s * (one - s) * (two + x * (one - two * s))).store(second + i);
      }
      for (; i < count; ++i) {
        const T s = T(1) / (T(1) + std::exp(-z[i]));
        value[i] = z[i] * s;
        first[i] = s * (T(1) + z[i] * (T(1) - s));
        if (second) second[i] = s * (T(1) - s) * (T(2) + z[i] * (T(1) - T(2) * s));
      }
      break;
    }
    case 1: {  // gelu (exact): z Φ(z)
      const T inv_sqrt2 = T(0.70710678118654752440);
      const T inv_sqrt_2pi = T(0.39894228040143267794);
      for (int64_t i = 0; i < count; ++i) {
        const T cdf = T(0.5) * (T(1) + std::erf(z[i] * inv_sqrt2));
        const T density = std::exp(T(-0.5) * z[i] * z[i]) * inv_sqrt_2pi;
        value[i] = z[i] * cdf;
        first[i] = cdf + z[i] * density;
        if (second) second[i] = density * (T(2) - z[i] * z[i]);
      }
      break;
    }
    case 2:  // relu
      for (int64_t i = 0; i < count; ++i) {
        value[i] = z[i] > T(0) ? z[i] : T(0);
        first[i] = z[i] > T(0) ? T(1) : T(0);
        if (second) second[i] = T(0);
      }
      break;
    default:  // tanh
      for (int64_t i = 0; i < count; ++i) {
        const T t = std::tanh(z[i]);
        value[i] = t;
        first[i] = T(1) - t * t;
        if (second) second[i] = T(-2) * t * (T(1) - t * t);
      }
  }
}

struct Dims {
  int64_t n, d_in, hidden, d_out;
  int64_t flags;
  bool residual() const { return flags & kResidual; }
  bool generated() const { return flags & kGenerated; }
  int64_t activation() const { return (flags >> kActivationShift) & 3; }
  bool save() const { return flags & kSave; }
};

// Where one problem's saved intermediates lie in its row of the forward's extra output. Only the
// results of products are kept: Z, G W2, Zv, G (Y when DGD preconditions layer 2) and the next read's
// Z. The backward recomputes the rest elementwise (σ and its derivatives, D1, D2), a few µs a problem
// against the ~100 µs of products it no longer repeats, and half the memory of keeping them too.
// fused.py's saved_size is the same sum, for the fake kernel.
struct Saved {
  int64_t z, gw, zv = -1, g, y = -1, read_z = -1, size;
  Saved(const Dims& dm, int64_t rows) {
    const int64_t hidden = dm.n * dm.hidden, out = dm.n * dm.d_out;
    int64_t end = 0;
    auto take = [&](int64_t count) { end += count; return end - count; };
    z = take(hidden), gw = take(hidden), g = take(out);
    if (dm.generated()) zv = take(hidden);
    if (dm.flags & kDgdSecond) y = take(out);
    if (rows > 0) read_z = take(rows * dm.hidden);
    size = dm.save() ? end : 0;
  }
};

// The forward intermediates of one problem's write: run computes them, save keeps its products'
// results for the backward, restore rebuilds the rest from those.
template <typename T>
struct Forward {
  TransposedRight<T> w1t, w2t;
  std::vector<T> z, h, dz, ddz, y, zv, hv, dzv, g, gw, d1, d2;
  explicit Forward(const Dims& dm)
      : w1t(dm.d_in * dm.hidden), w2t(dm.hidden * dm.d_out), z(dm.n * dm.hidden), h(dm.n * dm.hidden),
        dz(dm.n * dm.hidden), ddz(dm.n * dm.hidden), y(dm.n * dm.d_out), zv(dm.n * dm.hidden),
        hv(dm.n * dm.hidden), dzv(dm.n * dm.hidden), g(dm.n * dm.d_out), gw(dm.n * dm.hidden),
        d1(dm.n * dm.hidden), d2(dm.n * dm.d_out) {}

  // Everything up to the errors D1, D2 (the header's first four lines) for one problem.
  void run(const Dims& dm, const T* W1, const T* W2, const T* K, const T* V) {
    const int64_t n = dm.n, din = dm.d_in, hid = dm.hidden, dout = dm.d_out;
    w1t.set(W1, hid, din);
    w2t.set(W2, dout, hid);
    std::fill(z.begin(), z.end(), T(0));
    w1t.times(z.data(), K, n);
    activate(dm.activation(), z.data(), h.data(), dz.data(), static_cast<T*>(nullptr), n * hid);
    std::fill(y.begin(), y.end(), T(0));
    w2t.times(y.data(), h.data(), n);
    // g = P − T
    if (dm.generated()) {
      std::fill(zv.begin(), zv.end(), T(0));
      w1t.times(zv.data(), V, n);
      activate(dm.activation(), zv.data(), hv.data(), dzv.data(), static_cast<T*>(nullptr), n * hid);
      std::fill(g.begin(), g.end(), T(0));
      w2t.times(g.data(), hv.data(), n);  // the target's memory part
      for (int64_t i = 0; i < n * dout; ++i) g[i] = y[i] - g[i];
      if (dm.residual())
        for (int64_t i = 0; i < n * dout; ++i) g[i] += K[i] - V[i];
    } else {
      for (int64_t i = 0; i < n * dout; ++i) g[i] = y[i] - V[i];
      if (dm.residual())
        for (int64_t i = 0; i < n * dout; ++i) g[i] += K[i];
    }
    std::fill(gw.begin(), gw.end(), T(0));
    mm_nn(gw.data(), g.data(), W2, n, dout, hid);
    errors(dm);
  }

  void save(const Dims& dm, const Saved& place, T* saved) const {
    std::copy(z.begin(), z.end(), saved + place.z);
    std::copy(gw.begin(), gw.end(), saved + place.gw);
    std::copy(g.begin(), g.end(), saved + place.g);
    if (dm.generated()) std::copy(zv.begin(), zv.end(), saved + place.zv);
    if (dm.flags & kDgdSecond) std::copy(y.begin(), y.end(), saved + place.y);
  }

  // What run leaves, and σ''(Z), which only the backward reads, from what save kept and W2 (for w2t),
  // without a product.
  void restore(const Dims& dm, const T* W2, const Saved& place, const T* saved) {
    const int64_t n = dm.n, hid = dm.hidden, dout = dm.d_out;
    w2t.set(W2, dout, hid);
    std::copy(saved + place.z, saved + place.z + n * hid, z.begin());
    std::copy(saved + place.gw, saved + place.gw + n * hid, gw.begin());
    std::copy(saved + place.g, saved + place.g + n * dout, g.begin());
    activate(dm.activation(), z.data(), h.data(), dz.data(), ddz.data(), n * hid);
    if (dm.generated())
      activate(dm.activation(), saved + place.zv, hv.data(), dzv.data(), static_cast<T*>(nullptr), n * hid);
    if (dm.flags & kDgdSecond) std::copy(saved + place.y, saved + place.y + n * dout, y.begin());
    errors(dm);
  }

 private:
  // D2 = G + [dgd on layer 2] Y, D1 = σ'(Z) ⊙ (G W2) + [dgd on layer 1] Z
  void errors(const Dims& dm) {
    const int64_t n = dm.n, hid = dm.hidden, dout = dm.d_out;
    for (int64_t i = 0; i < n * dout; ++i) d2[i] = (dm.flags & kDgdSecond) ? g[i] + y[i] : g[i];
    for (int64_t i = 0; i < n * hid; ++i) d1[i] = dz[i] * gw[i] + ((dm.flags & kDgdFirst) ? z[i] : T(0));
  }
};

// A clipped level's factors for one problem (the header's ρ_s), from the forward's intermediates (run or restored),
// and the backward through them.
template <typename T>
struct Clip {
  std::vector<T> rho, squared, key, first, error, hidden, c, c2, twice;  // twice: 2 ∂‖∇ℓ_s‖²
  explicit Clip(int64_t n) : rho(n), squared(n), key(n), first(n), error(n), hidden(n), c(n), c2(n), twice(n) {}

  // ρ_s = clip / sqrt(max(‖∇ℓ_s‖², clip²)) (1 up to rounding under the bound, as memory.clip_scale), and the
  // scaled write weights c̃_s = ρ_s c_s, c̃'_s = ρ_s c'_s (c2q null without momentum).
  void scale(const Dims& dm, T clip, const Forward<T>& fw, const T* K, const T* cq, const T* c2q) {
    const int64_t din = dm.d_in, hid = dm.hidden, dout = dm.d_out;
    for (int64_t s = 0; s < dm.n; ++s) {
      T u = 0;
      for (int64_t i = s * hid; i < (s + 1) * hid; ++i) u += (fw.dz[i] * fw.gw[i]) * (fw.dz[i] * fw.gw[i]);
      key[s] = dot(K + s * din, K + s * din, din);
      first[s] = u;
      error[s] = dot(fw.g.data() + s * dout, fw.g.data() + s * dout, dout);
      hidden[s] = dot(fw.h.data() + s * hid, fw.h.data() + s * hid, hid);
      squared[s] = first[s] * key[s] + error[s] * hidden[s];
      rho[s] = clip / std::sqrt(std::max(squared[s], clip * clip));
      c[s] = rho[s] * cq[s];
      if (c2q != nullptr) c2[s] = rho[s] * c2q[s];
    }
  }

  // Given the scaled weights' gradients gc, gc2 (gc2 null without momentum): the unscaled ones' into GC, GC2, and
  // `twice` = 2 ∂‖∇ℓ_s‖² (zero where the clip does not bind, as clamp's derivative).
  void backward(const Dims& dm, T clip, const T* cq, const T* c2q, const T* gc, const T* gc2, T* GC, T* GC2) {
    for (int64_t s = 0; s < dm.n; ++s) {
      GC[s] += rho[s] * gc[s];
      T grad_rho = cq[s] * gc[s];
      if (gc2 != nullptr) {
        GC2[s] += rho[s] * gc2[s];
        grad_rho += c2q[s] * gc2[s];
      }
      twice[s] = squared[s] >= clip * clip ? -grad_rho * rho[s] / squared[s] : T(0);  // 2 · (−ρ / 2N) ∂ρ
    }
  }
};

// The read M_θ(X) of rows X (rows × d_in) at θ = (W1, W2), with what its backward needs.
template <typename T>
struct Read {
  TransposedRight<T> w1t, w2t;
  std::vector<T> z, h, dz, gh;
  Read(const Dims& dm, int64_t rows)
      : w1t(dm.d_in * dm.hidden), w2t(dm.hidden * dm.d_out), z(rows * dm.hidden), h(rows * dm.hidden),
        dz(rows * dm.hidden), gh(rows * dm.hidden) {}

  // out = M_θ(X); Z also into saved when it is given (a training call), for backward.
  void forward(const Dims& dm, const T* W1, const T* W2, const T* X, int64_t rows, T* out, T* saved) {
    const int64_t din = dm.d_in, hid = dm.hidden, dout = dm.d_out;
    w1t.set(W1, hid, din);
    w2t.set(W2, dout, hid);
    std::fill(z.begin(), z.end(), T(0));
    w1t.times(z.data(), X, rows);
    activate(dm.activation(), z.data(), h.data(), dz.data(), static_cast<T*>(nullptr), rows * hid);
    for (int64_t i = 0; i < rows * dout; ++i) out[i] = dm.residual() ? X[i] : T(0);
    w2t.times(out, h.data(), rows);
    if (saved != nullptr) std::copy(z.begin(), z.end(), saved);
  }

  // Given ∂out and the forward's Z (saved): G1 = E1 + ∂W1, G2 = E2 + ∂W2 (E1, E2 the new weights' own
  // gradients), and ∂X += … into GX.
  void backward(const Dims& dm, const T* W1, const T* W2, const T* X, const T* Z, int64_t rows, const T* grad_out,
                const T* E1, const T* E2, T* G1, T* G2, T* GX) {
    const int64_t din = dm.d_in, hid = dm.hidden, dout = dm.d_out;
    activate(dm.activation(), Z, h.data(), dz.data(), static_cast<T*>(nullptr), rows * hid);
    std::fill(gh.begin(), gh.end(), T(0));
    mm_nn(gh.data(), grad_out, W2, rows, dout, hid);  // out = H W2ᵀ (+ X)
    // G = E + …: the products' blocks start from E where they cover whole vectors (no copy of E first)
    const bool from_e = din % Vectorized<T>::size() == 0 && hid % Vectorized<T>::size() == 0;
    if (from_e) {
      mm_tn_from(G2, LoadC<T>{E2}, grad_out, h.data(), dout, rows, hid);
    } else {
      std::copy(E1, E1 + din * hid, G1);
      std::copy(E2, E2 + hid * dout, G2);
      mm_tn(G2, grad_out, h.data(), dout, rows, hid);
    }
    for (int64_t i = 0; i < rows * hid; ++i) gh[i] *= dz[i];  // now ∂Z
    if (dm.residual())
      for (int64_t i = 0; i < rows * din; ++i) GX[i] += grad_out[i];
    mm_nn(GX, gh.data(), W1, rows, hid, din);  // Z = X W1ᵀ
    if (from_e)
      mm_tn_from(G1, LoadC<T>{E1}, gh.data(), X, hid, rows, din);
    else
      mm_tn(G1, gh.data(), X, hid, rows, din);
  }
};

// The backward of one layer's writes U = Σ_s c_s D_sᵀ X_s (θ) and U' = Σ_s c'_s D_sᵀ X_s (S) for errors D
// (n × out) on inputs X (n × in), given ∂U = E and ∂U' = F (out × in; F null without momentum):
// ∂D_s = c_s E X_s + c'_s F X_s, ∂X_s += D_sᵀ(c_s E + c'_s F), ∂c_s += D_s·(E X_s), ∂c'_s += D_s·(F X_s).
template <typename T>
struct WriteBackward {
  TransposedRight<T> et, ft;
  std::vector<T> xe, xf, scaled;
  WriteBackward(int64_t n, int64_t out, int64_t in)
      : et(in * out), ft(in * out), xe(n * out), xf(n * out), scaled(n * out) {}

  void backward(int64_t n, int64_t out, int64_t in, const T* D, const T* X, const T* E, const T* F, const T* c,
                const T* c2, T* grad_D, T* grad_X, T* grad_c, T* grad_c2) {
    et.set(E, out, in);
    std::fill(xe.begin(), xe.begin() + n * out, T(0));
    et.times(xe.data(), X, n);
    if (F != nullptr) {
      ft.set(F, out, in);
      std::fill(xf.begin(), xf.begin() + n * out, T(0));
      ft.times(xf.data(), X, n);
    }
    for (int64_t s = 0; s < n; ++s) {
      const T* d = D + s * out;
      grad_c[s] += dot(d, xe.data() + s * out, out);
      for (int64_t i = 0; i < out; ++i) grad_D[s * out + i] = c[s] * xe[s * out + i];
      if (F != nullptr) {
        grad_c2[s] += dot(d, xf.data() + s * out, out);
        for (int64_t i = 0; i < out; ++i) grad_D[s * out + i] += c2[s] * xf[s * out + i];
      }
      for (int64_t i = 0; i < out; ++i) scaled[s * out + i] = c[s] * d[i];
    }
    mm_nn(grad_X, scaled.data(), E, n, out, in);
    if (F != nullptr) {
      for (int64_t s = 0; s < n; ++s)
        for (int64_t i = 0; i < out; ++i) scaled[s * out + i] = c2[s] * D[s * out + i];
      mm_nn(grad_X, scaled.data(), F, n, out, in);
    }
  }
};

// t contiguous, its leading dims flattened into one: (P, trailing dims…)
at::Tensor flat(const at::Tensor& t, int64_t trailing) {
  std::vector<int64_t> shape{-1};
  for (int64_t i = t.dim() - trailing; i < t.dim(); ++i) shape.push_back(t.size(i));
  return t.contiguous().reshape(shape);
}

at::Tensor flat(const std::optional<at::Tensor>& t, int64_t trailing) {
  return t.has_value() ? flat(*t, trailing) : at::Tensor();
}

template <typename T>
T* pointer(const at::Tensor& t, int64_t offset) {
  return t.defined() ? t.data_ptr<T>() + offset : nullptr;
}

// Memories stack A levels that share their inputs (HOPE's M_k, M_v, M_η, M_α): weights (B, A·H, rows,
// cols), inputs and gates (B, H, …). Problem (b, a, h) reads input row b·H + h.
struct Layout {
  Dims dm;
  int64_t batch, memories, heads;
  int64_t weight(int64_t shared, int64_t memory) const {
    return (shared / heads * memories + memory) * heads + shared % heads;
  }
};

Layout layout_of(const at::Tensor& W1, const at::Tensor& W2, const at::Tensor& keys, const at::Tensor& values,
                 int64_t flags) {
  TORCH_CHECK(W1.dim() == 4 && W2.dim() == 4 && keys.dim() == 4 && values.dim() == 4,
              "memory_write: weights (B, A·H, rows, cols), keys and values (B, H, n, width)");
  Dims dm{keys.size(2), W1.size(3), W1.size(2), W2.size(2), flags};
  TORCH_CHECK(W2.size(3) == dm.hidden && keys.size(3) == dm.d_in && values.size(3) == dm.d_out,
              "memory_write: mismatched widths");
  TORCH_CHECK(W1.size(1) % keys.size(1) == 0, "memory_write: the weights' heads must be a multiple of the keys'");
  return {dm, keys.size(0), W1.size(1) / keys.size(1), keys.size(1)};
}

// The operands of both directions, contiguous with their leading dims flattened (undefined when absent).
struct Operands {
  at::Tensor w1, w2, s1, s2, k, v, a, c, m, b, c2, x;
  int64_t rows;  // of the next read (0: none)
  Operands(const at::Tensor& W1, const at::Tensor& W2, const std::optional<at::Tensor>& S1,
           const std::optional<at::Tensor>& S2, const at::Tensor& keys, const at::Tensor& values,
           const at::Tensor& decay, const std::optional<at::Tensor>& momentum_scale,
           const std::optional<at::Tensor>& momentum_decay, const at::Tensor& write_weights,
           const std::optional<at::Tensor>& momentum_write_weights, const std::optional<at::Tensor>& next_inputs)
      : w1(flat(W1, 2)), w2(flat(W2, 2)), s1(flat(S1, 2)), s2(flat(S2, 2)), k(flat(keys, 2)), v(flat(values, 2)),
        a(flat(decay, 0)), c(flat(write_weights, 1)), m(flat(momentum_scale, 0)), b(flat(momentum_decay, 0)),
        c2(flat(momentum_write_weights, 1)), x(flat(next_inputs, 2)), rows(x.defined() ? x.size(1) : 0) {}
};

std::vector<at::Tensor> memory_write(const at::Tensor& W1, const at::Tensor& W2, const std::optional<at::Tensor>& S1,
                                     const std::optional<at::Tensor>& S2, const at::Tensor& keys,
                                     const at::Tensor& values, const at::Tensor& decay,
                                     const std::optional<at::Tensor>& momentum_scale,
                                     const std::optional<at::Tensor>& momentum_decay, const at::Tensor& write_weights,
                                     const std::optional<at::Tensor>& momentum_write_weights,
                                     const std::optional<at::Tensor>& next_inputs, int64_t flags, double clip) {
  const bool momentum = S1.has_value();
  const Layout lay = layout_of(W1, W2, keys, values, flags);
  const Dims& dm = lay.dm;
  const Operands op(W1, W2, S1, S2, keys, values, decay, momentum_scale, momentum_decay, write_weights,
                   momentum_write_weights, next_inputs);
  const at::Tensor &w1 = op.w1, &w2 = op.w2, &s1 = op.s1, &s2 = op.s2, &k = op.k, &v = op.v, &a = op.a, &c = op.c;
  const at::Tensor &m = op.m, &b = op.b, &c2 = op.c2, &x = op.x;
  const int64_t rows = op.rows;
  at::Tensor w1_out = at::empty_like(w1), w2_out = at::empty_like(w2);
  at::Tensor s1_out = momentum ? at::empty_like(s1) : at::empty({0}, w1.options());
  at::Tensor s2_out = momentum ? at::empty_like(s2) : at::empty({0}, w1.options());
  at::Tensor read = x.defined() ? at::empty({w1.size(0), rows, dm.d_out}, w1.options()) : at::empty({0}, w1.options());
  const Saved place(dm, rows);
  at::Tensor saved = at::empty({dm.save() ? w1.size(0) : 0, place.size}, w1.options());
  AT_DISPATCH_FLOATING_TYPES(w1.scalar_type(), "memory_write", [&] {
    using T = scalar_t;
    const int64_t n = dm.n, din = dm.d_in, hid = dm.hidden, dout = dm.d_out;
    const int64_t size1 = hid * din, size2 = dout * hid;
    at::parallel_for(0, lay.batch * lay.heads, 1, [&](int64_t begin, int64_t end) {
      Forward<T> fw(dm);
      Read<T> reader(dm, rows);
      Clip<T> clipped(clip > 0 ? n : 0);
      for (int64_t q = begin; q < end; ++q) {
        const T* Kq = k.data_ptr<T>() + q * n * din;
        const T* Vq = v.data_ptr<T>() + q * n * dout;
        const T* cq = c.data_ptr<T>() + q * n;
        const T* c2q = pointer<T>(c2, q * n);
        const T A = a.data_ptr<T>()[q];
        for (int64_t memory = 0; memory < lay.memories; ++memory) {
          const int64_t p = lay.weight(q, memory);
          const T* W1p = w1.data_ptr<T>() + p * size1;
          const T* W2p = w2.data_ptr<T>() + p * size2;
          T* kept = dm.save() ? saved.data_ptr<T>() + p * place.size : nullptr;
          fw.run(dm, W1p, W2p, Kq, Vq);
          if (kept != nullptr) fw.save(dm, place, kept);
          T* W1o = w1_out.data_ptr<T>() + p * size1;
          T* W2o = w2_out.data_ptr<T>() + p * size2;
          T* S1o = momentum ? s1_out.data_ptr<T>() + p * size1 : nullptr;
          T* S2o = momentum ? s2_out.data_ptr<T>() + p * size2 : nullptr;
          const T M = momentum ? m.data_ptr<T>()[q] : T(0), B = momentum ? b.data_ptr<T>()[q] : T(0);
          const T* S1p = pointer<T>(s1, p * size1);
          const T* S2p = pointer<T>(s2, p * size2);
          const T *cw = cq, *c2w = c2q;  // the write weights, scaled per token for a clipped level
          if (clip > 0) {
            clipped.scale(dm, T(clip), fw, Kq, cq, c2q);
            cw = clipped.c.data();
            c2w = c2q == nullptr ? nullptr : clipped.c2.data();
          }
          new_weights(W1o, S1o, W1p, S1p, A, M, B, cw, c2w, fw.d1.data(), Kq, hid, n, din);
          new_weights(W2o, S2o, W2p, S2p, A, M, B, cw, c2w, fw.d2.data(), fw.h.data(), dout, n, hid);
          if (rows > 0)  // the next chunk's read, while the new weights are in cache
            reader.forward(dm, W1o, W2o, x.data_ptr<T>() + q * rows * din, rows, read.data_ptr<T>() + p * rows * dout,
                           kept == nullptr ? nullptr : kept + place.read_z);
        }
      }
    });
  });
  auto shaped = [&](const at::Tensor& t, const std::optional<at::Tensor>& like) {
    return like.has_value() ? t.view(like->sizes()) : t;
  };
  return {w1_out.view(W1.sizes()), w2_out.view(W2.sizes()), shaped(s1_out, S1), shaped(s2_out, S2),
          x.defined() ? read.view({W1.size(0), W1.size(1), rows, dm.d_out}) : read, saved};
}

std::vector<at::Tensor> memory_write_backward(
    const at::Tensor& grad_W1, const at::Tensor& grad_W2, const std::optional<at::Tensor>& grad_S1,
    const std::optional<at::Tensor>& grad_S2, const std::optional<at::Tensor>& grad_read, const at::Tensor& W1,
    const at::Tensor& W2, const std::optional<at::Tensor>& S1, const std::optional<at::Tensor>& S2,
    const at::Tensor& keys, const at::Tensor& values, const at::Tensor& decay,
    const std::optional<at::Tensor>& momentum_scale, const std::optional<at::Tensor>& momentum_decay,
    const at::Tensor& write_weights, const std::optional<at::Tensor>& momentum_write_weights,
    const std::optional<at::Tensor>& next_inputs, const std::optional<at::Tensor>& new_W1,
    const std::optional<at::Tensor>& new_W2, const at::Tensor& saved_forward, int64_t flags, double clip) {
  const bool momentum = S1.has_value();
  const Layout lay = layout_of(W1, W2, keys, values, flags);
  const Dims& dm = lay.dm;
  const Operands op(W1, W2, S1, S2, keys, values, decay, momentum_scale, momentum_decay, write_weights,
                   momentum_write_weights, next_inputs);
  const at::Tensor &w1 = op.w1, &w2 = op.w2, &s1 = op.s1, &s2 = op.s2, &k = op.k, &v = op.v, &a = op.a, &c = op.c;
  const at::Tensor &m = op.m, &b = op.b, &c2 = op.c2, &x = op.x;
  const int64_t rows = op.rows;
  const at::Tensor e1 = flat(grad_W1, 2), e2 = flat(grad_W2, 2), f1 = flat(grad_S1, 2), f2 = flat(grad_S2, 2);
  const at::Tensor gread = flat(grad_read, 2), w1_new = flat(new_W1, 2), w2_new = flat(new_W2, 2);
  const Saved place(dm, rows);
  TORCH_CHECK(dm.save() && saved_forward.numel() == w1.size(0) * place.size,
              "memory_write_backward: the forward's saved intermediates (a call with kSave) are missing");
  const at::Tensor saved = saved_forward.contiguous();
  const auto none = at::empty({0}, w1.options());
  at::Tensor gw1 = at::empty_like(w1), gw2 = at::empty_like(w2), gk = at::empty_like(k), gv = at::empty_like(v);
  at::Tensor ga = at::empty_like(a), gc = at::empty_like(c);
  at::Tensor gs1 = momentum ? at::empty_like(s1) : none, gs2 = momentum ? at::empty_like(s2) : none;
  at::Tensor gm = momentum ? at::empty_like(m) : none, gb = momentum ? at::empty_like(b) : none;
  at::Tensor gc2 = momentum ? at::empty_like(c2) : none;
  at::Tensor gx = x.defined() ? at::zeros_like(x) : none;
  AT_DISPATCH_FLOATING_TYPES(w1.scalar_type(), "memory_write_backward", [&] {
    using T = scalar_t;
    const int64_t n = dm.n, din = dm.d_in, hid = dm.hidden, dout = dm.d_out;
    const int64_t size1 = hid * din, size2 = dout * hid;
    at::parallel_for(0, lay.batch * lay.heads, 1, [&](int64_t begin, int64_t end) {
      Forward<T> fw(dm);
      Read<T> reader(dm, rows);
      // the gradients of the new weights: the incoming ones plus the next read's
      std::vector<T> total1(size1), total2(size2);
      WriteBackward<T> writes(n, std::max(hid, dout), std::max(din, hid));
      std::vector<T> gd1(n * hid), gd2(n * dout), gg(n * dout), gh(n * hid);
      // the stacked factors of the products into ∂W2 (3 of n rows) and ∂W1 (2 of n rows)
      std::vector<T> left2(3 * n * dout), right2(3 * n * hid), left1(2 * n * hid), right1(2 * n * din);
      // a clipped level: its factors, the scaled weights' gradients and ∂U1 (U1 = σ'(Z) ⊙ (G W2), with its clip term)
      Clip<T> clipped(clip > 0 ? n : 0);
      std::vector<T> gcw(clip > 0 ? n : 0), gc2w(clip > 0 ? n : 0), gu(clip > 0 ? n * hid : 0);
      for (int64_t q = begin; q < end; ++q) {
        const T* Kq = k.data_ptr<T>() + q * n * din;
        const T* Vq = v.data_ptr<T>() + q * n * dout;
        const T* cq = c.data_ptr<T>() + q * n;
        const T* c2q = pointer<T>(c2, q * n);
        const T A = a.data_ptr<T>()[q];
        T* GK = gk.data_ptr<T>() + q * n * din;
        T* GV = gv.data_ptr<T>() + q * n * dout;
        T* GC = gc.data_ptr<T>() + q * n;
        T* GC2 = pointer<T>(gc2, q * n);
        std::fill(GK, GK + n * din, T(0));
        std::fill(GV, GV + n * dout, T(0));
        std::fill(GC, GC + n, T(0));
        T grad_decay = 0, grad_scale = 0, grad_carry = 0;
        if (momentum) std::fill(GC2, GC2 + n, T(0));
        for (int64_t memory = 0; memory < lay.memories; ++memory) {
          const int64_t p = lay.weight(q, memory);
          const T* W1p = w1.data_ptr<T>() + p * size1;
          const T* W2p = w2.data_ptr<T>() + p * size2;
          const T* E1 = e1.data_ptr<T>() + p * size1;
          const T* E2 = e2.data_ptr<T>() + p * size2;
          const T* kept = saved.data_ptr<T>() + p * place.size;
          if (rows > 0) {  // the next read's gradient joins the new weights' own
            reader.backward(dm, w1_new.data_ptr<T>() + p * size1, w2_new.data_ptr<T>() + p * size2,
                            x.data_ptr<T>() + q * rows * din, kept + place.read_z, rows,
                            gread.data_ptr<T>() + p * rows * dout, E1, E2, total1.data(), total2.data(),
                            gx.data_ptr<T>() + q * rows * din);
            E1 = total1.data();
            E2 = total2.data();
          }
          fw.restore(dm, W2p, place, kept);
          T* G1 = gw1.data_ptr<T>() + p * size1;
          T* G2 = gw2.data_ptr<T>() + p * size2;
          // W' = A W + m S + …, S' = B S + …
          // ∂W = A E (+ the products at the end): in their blocks' registers where those cover whole vectors
          const bool from_e = din % Vectorized<T>::size() == 0 && hid % Vectorized<T>::size() == 0;
          if (!from_e) {
            for (int64_t i = 0; i < size1; ++i) G1[i] = A * E1[i];
            for (int64_t i = 0; i < size2; ++i) G2[i] = A * E2[i];
          }
          const T *F1 = nullptr, *F2 = nullptr, *S1p = nullptr, *S2p = nullptr;
          T M = 0, B = 0, *GS1 = nullptr, *GS2 = nullptr;
          if (momentum) {
            M = m.data_ptr<T>()[q], B = b.data_ptr<T>()[q];
            S1p = s1.data_ptr<T>() + p * size1;
            S2p = s2.data_ptr<T>() + p * size2;
            F1 = f1.data_ptr<T>() + p * size1;
            F2 = f2.data_ptr<T>() + p * size2;
            GS1 = gs1.data_ptr<T>() + p * size1;
            GS2 = gs2.data_ptr<T>() + p * size2;
          }
          // E·W, E·S, F·S and S' = m E + B F in one pass over each weight
          T ew1 = 0, es1 = 0, fs1 = 0, ew2 = 0, es2 = 0, fs2 = 0;
          decay_dots(E1, F1, W1p, S1p, size1, ew1, es1, fs1, M, B, GS1);
          decay_dots(E2, F2, W2p, S2p, size2, ew2, es2, fs2, M, B, GS2);
          grad_decay += ew1 + ew2;
          if (momentum) grad_scale += es1 + es2, grad_carry += fs1 + fs2;
          // The writes Σ_s c_s D_sᵀ X_s of layer 1 (D1 on the keys) and layer 2 (D2 on the hidden units)
          // (a clipped level's writes take the scaled weights c̃ = ρ c, whose gradients gather apart first)
          const T *cw = cq, *c2w = c2q;
          T *GCw = GC, *GC2w = GC2;
          if (clip > 0) {
            clipped.scale(dm, T(clip), fw, Kq, cq, c2q);
            cw = clipped.c.data();
            c2w = momentum ? clipped.c2.data() : nullptr;
            std::fill(gcw.begin(), gcw.end(), T(0));
            std::fill(gc2w.begin(), gc2w.end(), T(0));
            GCw = gcw.data();
            GC2w = momentum ? gc2w.data() : nullptr;
          }
          writes.backward(n, hid, din, fw.d1.data(), Kq, E1, F1, cw, c2w, gd1.data(), GK, GCw, GC2w);
          std::fill(gh.begin(), gh.end(), T(0));
          writes.backward(n, dout, hid, fw.d2.data(), fw.h.data(), E2, F2, cw, c2w, gd2.data(), gh.data(), GCw, GC2w);
          const T* gd1u = gd1.data();  // ∂U1: ∂D1, and a clipped level's term through ρ (not DGD's Z term)
          if (clip > 0) {
            // ‖∇ℓ_s‖² = ‖U1_s‖²‖K_s‖² + ‖G_s‖²‖H_s‖²: ∂U1_s, ∂K_s, ∂G_s (below, into ∂G) and ∂H_s from 2 ∂‖∇ℓ_s‖²
            clipped.backward(dm, T(clip), cq, c2q, gcw.data(), momentum ? gc2w.data() : nullptr, GC, GC2);
            for (int64_t s = 0; s < n; ++s) {
              const T t = clipped.twice[s];
              for (int64_t i = s * hid; i < (s + 1) * hid; ++i) {
                gu[i] = gd1[i] + t * clipped.key[s] * fw.dz[i] * fw.gw[i];
                gh[i] += t * clipped.error[s] * fw.h[i];
              }
              for (int64_t i = 0; i < din; ++i) GK[s * din + i] += t * clipped.first[s] * Kq[s * din + i];
            }
            gd1u = gu.data();
          }
          // D1 = σ'(Z) ⊙ (G W2) + [dgd] Z, D2 = G + [dgd] Y. The products into ∂W2 (Gᵀ ∂(GW), ∂Yᵀ H, ∂Tᵀ Hv)
          // and ∂W1 (∂Zᵀ K, ∂Zvᵀ V) run as one product each, on their factors stacked in left2/right2 and
          // left1/right1: the same sums in the same order as one product after another, without a pass
          // over ∂W (load and store) for each.
          T* ggw = right2.data();  // ∂(GW)
          T* gz = left1.data();    // ∂Z
          for (int64_t i = 0; i < n * hid; ++i) {
            ggw[i] = fw.dz[i] * gd1u[i];
            gz[i] = fw.ddz[i] * fw.gw[i] * gd1u[i] + ((dm.flags & kDgdFirst) ? gd1[i] : T(0));
          }
          std::copy(gd2.begin(), gd2.end(), gg.begin());
          if (clip > 0)  // ∂G_s's term through ρ: 2 ∂‖∇ℓ_s‖² ‖H_s‖² G_s
            for (int64_t s = 0; s < n; ++s) {
              const T t = clipped.twice[s] * clipped.hidden[s];
              for (int64_t i = s * dout; i < (s + 1) * dout; ++i) gg[i] += t * fw.g[i];
            }
          fw.w2t.times(gg.data(), ggw, n);  // G W2 → ∂G += ∂(GW) W2ᵀ
          std::copy(fw.g.begin(), fw.g.end(), left2.begin());
          // G = P − T with P = Y + [residual] K: ∂Y = ∂G (+ ∂D2 with dgd), ∂T = −∂G
          T* gy = left2.data() + n * dout;
          for (int64_t i = 0; i < n * dout; ++i) gy[i] = gg[i] + ((dm.flags & kDgdSecond) ? gd2[i] : T(0));
          if (dm.residual())
            for (int64_t i = 0; i < n * din; ++i) GK[i] += gg[i];
          mm_nn(gh.data(), gy, W2p, n, dout, hid);  // Y = H W2ᵀ
          std::copy(fw.h.begin(), fw.h.end(), right2.begin() + n * hid);
          for (int64_t i = 0; i < n * hid; ++i) gz[i] += fw.dz[i] * gh[i];
          mm_nn(GK, gz, W1p, n, hid, din);  // Z = K W1ᵀ
          std::copy(Kq, Kq + n * din, right1.begin());
          int64_t terms = 1;  // the products of layer 1's inputs (layer 2 has one more)
          if (dm.generated()) {  // T = σ(V W1ᵀ) W2ᵀ + [residual] V, ∂T = −∂G
            if (dm.residual())
              for (int64_t i = 0; i < n * dout; ++i) GV[i] -= gg[i];
            T* gt = left2.data() + 2 * n * dout;  // ∂T
            for (int64_t i = 0; i < n * dout; ++i) gt[i] = -gg[i];
            T* gzv = left1.data() + n * hid;
            std::fill(gzv, gzv + n * hid, T(0));
            mm_nn(gzv, gt, W2p, n, dout, hid);  // ∂Hv
            std::copy(fw.hv.begin(), fw.hv.end(), right2.begin() + 2 * n * hid);
            for (int64_t i = 0; i < n * hid; ++i) gzv[i] *= fw.dzv[i];
            mm_nn(GV, gzv, W1p, n, hid, din);
            std::copy(Vq, Vq + n * din, right1.begin() + n * din);
            terms = 2;
          } else {
            for (int64_t i = 0; i < n * dout; ++i) GV[i] -= gg[i];
          }
          if (from_e) {
            using Vec = Vectorized<T>;
            const Vec decay(A);
            mm_tn_from(G2, [&](int64_t at) { return decay * Vec::loadu(E2 + at); }, left2.data(), right2.data(), dout,
                       (terms + 1) * n, hid);
            mm_tn_from(G1, [&](int64_t at) { return decay * Vec::loadu(E1 + at); }, left1.data(), right1.data(), hid,
                       terms * n, din);
          } else {
            mm_tn(G2, left2.data(), right2.data(), dout, (terms + 1) * n, hid);
            mm_tn(G1, left1.data(), right1.data(), hid, terms * n, din);
          }
        }
        ga.data_ptr<T>()[q] = grad_decay;
        if (momentum) gm.data_ptr<T>()[q] = grad_scale, gb.data_ptr<T>()[q] = grad_carry;
      }
    });
  });
  auto shaped = [&](const at::Tensor& t, const std::optional<at::Tensor>& like) {
    return like.has_value() ? t.view(like->sizes()) : t;
  };
  return {gw1.view(W1.sizes()),  gw2.view(W2.sizes()),
          shaped(gs1, S1),       shaped(gs2, S2),
          gk.view(keys.sizes()), gv.view(values.sizes()),
          ga.view(decay.sizes()), shaped(gm, momentum_scale),
          shaped(gb, momentum_decay), gc.view(write_weights.sizes()),
          shaped(gc2, momentum_write_weights), shaped(gx, next_inputs)};
}

}  // namespace

// The ops' namespace is nldsl_<digest of this source and its flags> (fused.py passes it): a graph
// that inductor cached for an earlier kernel names that kernel's namespace, so it is never replayed
// against this one (its cache key does not cover a custom op's output shapes, and a graph cached
// for another saved layout failed at run time). The indirection lets the macro argument expand.
#ifndef NLDSL_NAMESPACE
#define NLDSL_NAMESPACE nldsl
#endif
#define NLDSL_LIBRARY(ns, m) TORCH_LIBRARY(ns, m)
#define NLDSL_LIBRARY_IMPL(ns, key, m) TORCH_LIBRARY_IMPL(ns, key, m)

NLDSL_LIBRARY(NLDSL_NAMESPACE, m) {
  m.def(
      "memory_write(Tensor W1, Tensor W2, Tensor? S1, Tensor? S2, Tensor keys, Tensor values, Tensor decay, "
      "Tensor? momentum_scale, Tensor? momentum_decay, Tensor write_weights, Tensor? momentum_write_weights, "
      "Tensor? next_inputs, int flags, float clip) -> Tensor[]");
  m.def(
      "memory_write_backward(Tensor grad_W1, Tensor grad_W2, Tensor? grad_S1, Tensor? grad_S2, Tensor? grad_read, "
      "Tensor W1, Tensor W2, Tensor? S1, Tensor? S2, Tensor keys, Tensor values, Tensor decay, "
      "Tensor? momentum_scale, Tensor? momentum_decay, Tensor write_weights, Tensor? momentum_write_weights, "
      "Tensor? next_inputs, Tensor? new_W1, Tensor? new_W2, Tensor saved, int flags, float clip) -> Tensor[]");
}

NLDSL_LIBRARY_IMPL(NLDSL_NAMESPACE, CPU, m) {
  m.impl("memory_write", &memory_write);
  m.impl("memory_write_backward", &memory_write_backward);
}
