// The fused decoder step of `fused.FusedDecoderStep` for one new token per row, and the fused encoder pass of
// `fused.FusedEncoder` (fast path, no attention weights), in C++.
//
// Why: a one-token step of a small model issues about 150 ATen calls whose kernels take a few
// microseconds each; from Python every call also pays the interpreter, the argument parsing and the
// Tensor wrappers, which is most of the step's time. This file issues the same ATen calls, with the same
// arguments, views and order as `FusedDecoderStep.step` (t == 1) and `FusedEncoder.encode`, so every kernel
// sees the same inputs and the logits, memory and attention weights are bit-identical to the Python passes
// (tests assert it). It holds
// no weights of its own: the tensors are those the Python side packed (`linear._Pack.native_spec`).
//
// Shapes: N rows (sentences x beams), D d_model, H heads, d_k = D / H, S source length, V vocab,
// L decoder layers, T_max the cache's capacity, P the positions cached before this step.

#include <torch/extension.h>
#include <torch/csrc/jit/api/object.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <vector>

namespace {

using at::Tensor;

// How a product is computed; the Python side chooses it with `linear._Pack`'s rules, once for one row
// and once for several rows, so that the C++ step calls the kernel the Python step would.
enum Kernel : int64_t {
  kW8 = 0,       // weight-only int8 GEMV on bf16 activations, then + bias in float32
  kSplit = 1,    // float32 column blocks as one batched product (baddbmm)
  kFbgemm = 2,   // fbgemm's dynamic int8 product (quantized::linear_dynamic) on a prepacked weight
  kOnednn = 3,   // oneDNN's linear on a reordered weight (mkldnn::_linear_pointwise)
  kAddmm = 4,    // plain GEMM on the (D_in, D_out) weight
};

constexpr int64_t kRowSplits = 4;  // linear._ROW_SPLITS

const c10::OperatorHandle& linear_dynamic_op() {
  static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow("quantized::linear_dynamic", "");
  return op;
}

const c10::OperatorHandle& onednn_linear_op() {
  static const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  return op;
}

struct Product {
  int64_t one = kAddmm;   // kernel for a one-row call
  int64_t many = kAddmm;  // kernel for several rows
  Tensor weight, bias;    // (D_in, D_out) and (D_out,) or undefined
  Tensor q8, scales8;     // kW8: int8 (D_out, D_in), bf16 scales (D_out,)
  Tensor blocks, block_bias;  // kSplit: (s, D_in, D_out / s), (s, 1, D_out / s)
  c10::IValue fbgemm;     // kFbgemm: the prepacked weight (a TorchScript custom class)
  Tensor onednn;          // kOnednn: the reordered weight

  Tensor operator()(const Tensor& flat) const {
    const int64_t rows = flat.size(0);
    switch (rows == 1 ? one : many) {
      case kW8: {
        Tensor out = at::_weight_int8pack_mm(flat.to(at::kBFloat16), q8, scales8).to(at::kFloat);
        return bias.defined() ? out.add_(bias) : out;
      }
      case kSplit: {
        Tensor out = at::baddbmm(block_bias, flat.expand({kRowSplits, rows, flat.size(1)}), blocks);  // (s, rows, D_out / s)
        return rows == 1 ? out.view({1, -1}) : out.transpose(0, 1).reshape({rows, -1});  // (rows, D_out)
      }
      case kFbgemm: {
        torch::jit::Stack stack{flat.contiguous(), fbgemm, true};
        linear_dynamic_op().callBoxed(&stack);
        return stack[0].toTensor();
      }
      case kOnednn: {
        c10::impl::GenericList scalars(c10::OptionalType::create(c10::NumberType::get()));
        torch::jit::Stack stack{flat.contiguous(), onednn, bias.defined() ? c10::IValue(bias) : c10::IValue(),
                                c10::IValue(std::string("none")), c10::IValue(std::move(scalars)), c10::IValue(std::string(""))};
        onednn_linear_op().callBoxed(&stack);
        return stack[0].toTensor();
      }
      default:
        return bias.defined() ? at::addmm(bias, flat, weight) : at::mm(flat, weight);
    }
  }
};

struct Norm {
  std::vector<int64_t> shape;
  Tensor weight, bias;
  double eps = 1e-5;
  Tensor operator()(const Tensor& x) const { return at::layer_norm(x, shape, weight, bias, eps, false); }
};

struct Layer {
  Product qkv, self_out, cross_q, cross_out, fc1, fc2;
  Norm norms[3];
};

enum Activation : int64_t { kRelu = 0, kGelu = 1, kGeluTanh = 2, kSilu = 3 };

// What the encoder and the decoder step share: sizes, the norm placement, the activation, the embedding and
// positions, and the spec readers of the Python side's packed products and norms.
class Pass {
 public:
  Pass(int64_t d_model, int64_t n_heads, bool pre_norm, int64_t activation, Tensor embedding, Tensor positions,
       double scale)
      : d_(d_model), h_(n_heads), dk_(d_model / n_heads), pre_(pre_norm), act_(activation),
        embedding_(std::move(embedding)), positions_(std::move(positions)), scale_(scale) {}

 protected:
  static Product product(const py::tuple& spec) {
    // (one, many, weight, bias, q8, scales8, blocks, block_bias, fbgemm, onednn), None where unused
    TORCH_CHECK(spec.size() == 10, "a product spec has 10 fields");
    Product p;
    p.one = spec[0].cast<int64_t>();
    p.many = spec[1].cast<int64_t>();
    auto tensor = [&](size_t i) { return spec[i].is_none() ? Tensor() : spec[i].cast<Tensor>(); };
    p.weight = tensor(2);
    p.bias = tensor(3);
    p.q8 = tensor(4);
    p.scales8 = tensor(5);
    p.blocks = tensor(6);
    p.block_bias = tensor(7);
    if (!spec[8].is_none()) p.fbgemm = c10::IValue(spec[8].cast<torch::jit::Object>()._ivalue());
    p.onednn = tensor(9);
    return p;
  }

  static Norm norm(const py::tuple& spec) {  // (normalized_shape, weight, bias, eps)
    Norm nm;
    nm.shape = spec[0].cast<std::vector<int64_t>>();
    nm.weight = spec[1].cast<Tensor>();
    nm.bias = spec[2].cast<Tensor>();
    nm.eps = spec[3].cast<double>();
    return nm;
  }

  template <typename F>
  Tensor sublayer(const Tensor& x, const Norm& norm, F&& f) const {
    // post-norm x = LN(x + f(x)); pre-norm x = x + f(LN(x))  (fused._Residuals)
    return pre_ ? f(norm(x)).add_(x) : norm(f(x).add_(x));
  }

  Tensor activate(const Tensor& x) const {
    switch (act_) {
      case kGelu: return at::gelu(x, "none");
      case kGeluTanh: return at::gelu(x, "tanh");
      case kSilu: return at::silu(x);
      default: return at::relu(x);
    }
  }

  int64_t d_, h_, dk_;
  bool pre_;
  int64_t act_;
  Tensor embedding_, positions_;
  double scale_;
};

// fused.FusedEncoder.encode without attention weights: src (B, S) ids -> memory (B, S, D), source mask (B, S).
class Encoder : public Pass {
 public:
  Encoder(int64_t d_model, int64_t n_heads, bool pre_norm, int64_t activation, Tensor embedding, Tensor positions,
          double scale, int64_t pad_id)
      : Pass(d_model, n_heads, pre_norm, activation, std::move(embedding), std::move(positions), scale), pad_(pad_id) {}

  void add_layer(std::vector<py::tuple> products, std::vector<py::tuple> norms) {
    TORCH_CHECK(products.size() == 4 && norms.size() == 2, "an encoder layer has 4 products and 2 norms");
    EncoderLayer layer;
    Product* slots[4] = {&layer.qkv, &layer.out, &layer.fc1, &layer.fc2};
    for (size_t i = 0; i < 4; ++i) *slots[i] = product(products[i]);
    for (size_t i = 0; i < 2; ++i) layer.norms[i] = norm(norms[i]);
    layers_.push_back(std::move(layer));
  }

  void set_final_norm(std::optional<py::tuple> final_norm) {
    if (final_norm) final_norm_ = norm(*final_norm);
  }

  std::vector<Tensor> encode(const Tensor& src) const {
    const int64_t b = src.size(0), s = src.size(1), rows = b * s;
    Tensor source_mask = src.ne(pad_);  // (B, S)
    std::optional<Tensor> mask;  // attention.key_padding_mask: None when nothing is padding
    if (!source_mask.all().item<bool>()) mask = source_mask.unsqueeze(1).unsqueeze(2);  // (B, 1, 1, S)
    Tensor x = at::embedding(embedding_, src).mul_(scale_).add_(positions_.slice(0, 0, s)).view({rows, d_});  // (B·S, D)
    for (const EncoderLayer& layer : layers_) {
      x = sublayer(x, layer.norms[0], [&](const Tensor& hx) {
        Tensor qkv = layer.qkv(hx).view({b, s, 3, h_, dk_}).permute({2, 0, 3, 1, 4});  // (3, B, H, S, d_k)
        Tensor ctx = at::scaled_dot_product_attention(qkv.select(0, 0), qkv.select(0, 1), qkv.select(0, 2), mask);  // (B, H, S, d_k)
        return layer.out(ctx.transpose(1, 2).reshape({rows, d_}));  // heads concatenated, (B·S, D)
      });
      x = sublayer(x, layer.norms[1], [&](const Tensor& hx) { return layer.fc2(activate(layer.fc1(hx))); });
    }
    if (final_norm_) x = (*final_norm_)(x);
    return {x.view({b, s, d_}), source_mask};
  }

 private:
  struct EncoderLayer {
    Product qkv, out, fc1, fc2;
    Norm norms[2];
  };
  int64_t pad_;
  std::vector<EncoderLayer> layers_;
  std::optional<Norm> final_norm_;
};

class Step : public Pass {
 public:
  Step(int64_t d_model, int64_t n_heads, bool pre_norm, int64_t activation, Tensor embedding, Tensor positions,
       double scale)
      : Pass(d_model, n_heads, pre_norm, activation, std::move(embedding), std::move(positions), scale) {}

  void add_layer(std::vector<py::tuple> products, std::vector<py::tuple> norms) {
    TORCH_CHECK(products.size() == 6 && norms.size() == 3, "a layer has 6 products and 3 norms");
    Layer layer;
    Product* slots[6] = {&layer.qkv, &layer.self_out, &layer.cross_q, &layer.cross_out, &layer.fc1, &layer.fc2};
    for (size_t i = 0; i < 6; ++i) *slots[i] = product(products[i]);
    for (size_t i = 0; i < 3; ++i) layer.norms[i] = norm(norms[i]);
    layers_.push_back(std::move(layer));
  }

  void set_output(py::tuple logits, std::optional<py::tuple> final_norm) {
    logits_ = product(logits);
    if (final_norm) final_norm_ = norm(*final_norm);
  }

  // tokens: (N, 1) next decoder inputs; self_kv: (L, 2, N, H, T_max, d_k), positions below `pos` filled;
  // cross_kv: (L, 2, N, H, S, d_k); cross_mask: (N, 1, 1, S) bool or None.
  // Returns [logits (N, 1, V)] and, with need_weights, the self-attention (N, L, H, 1, P + 1) and the
  // cross-attention (N, L, H, 1, S). Writes the new keys/values at position `pos`; the caller advances the cache.
  std::vector<Tensor> step(const Tensor& tokens, const Tensor& self_kv, int64_t pos, const Tensor& cross_kv,
                           const std::optional<Tensor>& cross_mask, bool need_weights) const {
    const int64_t n = tokens.size(0), end = pos + 1;
    std::vector<Tensor> self_ws, cross_ws;
    Tensor x = at::embedding(embedding_, tokens).mul_(scale_).add_(positions_.slice(0, pos, end)).view({n, d_});  // (N, D)
    for (size_t i = 0; i < layers_.size(); ++i) {
      const Layer& layer = layers_[i];
      const int64_t li = static_cast<int64_t>(i);
      Tensor cross_k = cross_kv.select(0, li).select(0, 0), cross_v = cross_kv.select(0, li).select(0, 1);  // (N, H, S, d_k)
      x = sublayer(x, layer.norms[0], [&](const Tensor& hx) {
        Tensor qkv = layer.qkv(hx).view({n, 1, 3, h_, dk_}).permute({2, 0, 3, 1, 4});  // (3, N, H, 1, d_k)
        Tensor buf = self_kv.select(0, li);  // (2, N, H, T_max, d_k)
        buf.slice(3, pos, end).copy_(qkv.slice(0, 1, 3));
        Tensor k = buf.select(0, 0).slice(2, 0, end), v = buf.select(0, 1).slice(2, 0, end);  // (N, H, P + 1, d_k)
        return layer.self_out(attend(qkv.select(0, 0), k, v, std::nullopt, need_weights, self_ws, n));
      });
      x = sublayer(x, layer.norms[1], [&](const Tensor& hx) {
        Tensor q = layer.cross_q(hx).view({n, 1, h_, dk_}).transpose(1, 2);  // (N, H, 1, d_k)
        return layer.cross_out(attend(q, cross_k, cross_v, cross_mask, need_weights, cross_ws, n));
      });
      x = sublayer(x, layer.norms[2], [&](const Tensor& hx) { return layer.fc2(activate(layer.fc1(hx))); });
    }
    if (final_norm_) x = (*final_norm_)(x);
    std::vector<Tensor> out{logits_(x).view({n, 1, -1})};  // (N, 1, V)
    if (need_weights) {
      out.push_back(at::stack(self_ws, 1));   // (N, L, H, 1, P + 1)
      out.push_back(at::stack(cross_ws, 1));  // (N, L, H, 1, S)
    }
    return out;
  }

  // search.search's greedy loop from its first free step on, for the fast path (no attention weights, no
  // draft): the same selections, cache updates, steps and scoring calls as that loop makes, so the same
  // records (tests assert it). In: the rows' best (log-probs, ids) of the first free position (N, n_top)
  // each, their scores (N,), the sentence of every row, every sentence's length cap, the forced prefix's
  // length, and the cache's tensors with its length `pos`. Out: per step the rows' (parent, token, token
  // log-prob) and then, unless every sentence is done, the next position's alternatives (N, n_alt) x2; the
  // finished hypotheses as (sentence, score, position, row, token, token log-prob, ended with EOS); the steps
  // taken; and the target position whose best log-prob was not finite (-1: none; the caller raises).
  using Finished = std::tuple<int64_t, double, int64_t, int64_t, int64_t, double, bool>;
  std::tuple<std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>,
             std::vector<Finished>, int64_t, int64_t>
  greedy(Tensor row_lp, Tensor row_ids, Tensor scores, std::vector<int64_t> alive, const std::vector<int64_t>& max_new,
         int64_t prefix_len, int64_t eos_id, int64_t n_alt, const Tensor& banned, Tensor self_kv, int64_t pos,
         Tensor cross_kv, Tensor source_mask, std::optional<Tensor> cross_mask) const {
    History hist;
    std::vector<Finished> finished;
    const int64_t n_top = row_ids.size(1);
    const Tensor identity = at::arange(row_ids.size(0), row_ids.options());  // Greedy._identity
    Tensor spare;  // KVCache.spare
    int64_t step = 0, bad_position = -1;
    while (true) {
      const int64_t nb = static_cast<int64_t>(alive.size()), position = prefix_len + step;
      Tensor token = row_ids.select(1, 0), chosen = row_lp.select(1, 0);  // (N,) each: the best of each row
      Tensor new_scores = scores.add(chosen);  // (N,)
      auto tok = token.accessor<int64_t, 1>();
      auto lp = chosen.accessor<float, 1>();
      auto sc = new_scores.accessor<float, 1>();
      std::vector<int64_t> keep, kept;
      for (int64_t r = 0; r < nb; ++r) {
        const bool ended = tok[r] == eos_id, over = ended || step + 1 >= max_new[alive[r]];
        if (over) {
          finished.emplace_back(alive[r], sc[r], position, r, tok[r], lp[r], ended);
        } else {
          keep.push_back(r);
          kept.push_back(alive[r]);
        }
      }
      Tensor parent = nb == identity.size(0) ? identity : identity.slice(0, 0, nb);
      ++step;
      const bool dropped = select_rows(hist, keep, std::move(kept), alive, parent, token, chosen, new_scores, scores);
      if (alive.empty()) break;
      if (dropped) {  // KVCache.reorder(parent, same_source=False): the kept rows of every tensor
        reorder_kv(self_kv, spare, parent, pos);
        drop_source_rows(parent, cross_kv, source_mask, cross_mask);
      }
      if (!next_position(token, self_kv, pos, cross_kv, cross_mask, banned, n_alt, row_lp, row_ids, hist)) {
        bad_position = prefix_len + step;
        break;
      }
    }
    return {hist.parents, hist.tokens, hist.chosens, hist.alt_ids, hist.alt_lps, finished, step, bad_position};
  }

  // search.search's beam loop (search.Beam) from its first free step on, for the fast path: the same
  // candidate ranking, finished hypotheses, stopping rules, cache reorders, steps and scoring calls, so the same
  // records. In as `greedy`, plus K (beam width), the length penalty alpha and early stopping; `finished` out
  // holds every sentence's kept finished hypotheses (best first, at most K) in the order search keeps them.
  std::tuple<std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>, std::vector<Tensor>,
             std::vector<Finished>, int64_t, int64_t>
  beam(Tensor row_lp, Tensor row_ids, Tensor scores, std::vector<int64_t> alive, const std::vector<int64_t>& max_new,
       int64_t prefix_len, int64_t eos_id, int64_t n_alt, const Tensor& banned, Tensor self_kv, int64_t pos,
       Tensor cross_kv, Tensor source_mask, std::optional<Tensor> cross_mask, int64_t k_beam, double alpha,
       bool early_stopping) const {
    struct Fin { double score; int64_t position, row, token; double token_lp; bool eos; };
    std::vector<std::vector<Fin>> fin(max_new.size());
    Tensor spare;  // KVCache.spare
    History hist;
    const int64_t n_top = row_ids.size(1);
    const double inf = std::numeric_limits<double>::infinity();
    auto penalty = [&](int64_t length) { return std::pow((5.0 + static_cast<double>(length)) / 6.0, alpha); };
    int64_t step = 0, bad_position = -1;
    while (true) {
      const int64_t nb = static_cast<int64_t>(alive.size()), position = prefix_len + step, new_len = position + 1;
      const int64_t w = std::min(2 * k_beam, n_top);
      Tensor cand = scores.unsqueeze(1).add(row_lp.slice(1, 0, w)).view({nb, k_beam * w});  // (B_alive, K*w)
      auto best = at::topk(cand, 2 * k_beam, -1);  // (B_alive, 2K) each, best first
      Tensor top_scores = std::get<0>(best).contiguous(), top_idx = std::get<1>(best).contiguous();
      Tensor ids_w = row_ids.slice(1, 0, w).contiguous(), lps_w = row_lp.slice(1, 0, w).contiguous();
      const float* ts = top_scores.data_ptr<float>();
      const int64_t* ti = top_idx.data_ptr<int64_t>();
      const int64_t* idp = ids_w.data_ptr<int64_t>();
      const float* lpp = lps_w.data_ptr<float>();
      const double lp_now = penalty(new_len);
      std::vector<int64_t> parent_l, token_l;
      std::vector<double> score_l, chosen_l;
      for (int64_t bi = 0; bi < nb; ++bi) {
        std::vector<std::tuple<int64_t, int64_t, double, double>> live, ended;
        for (int64_t rank = 0; rank < 2 * k_beam; ++rank) {
          const double sc = ts[bi * 2 * k_beam + rank];
          const int64_t idx = ti[bi * 2 * k_beam + rank];
          const int64_t row = bi * k_beam + idx / w, col = idx % w;
          const int64_t tok = idp[row * w + col];
          const double lp = lpp[row * w + col];
          if (tok == eos_id) {
            if (rank < k_beam && std::isfinite(sc)) fin[alive[bi]].push_back({sc / lp_now, position, row, tok, lp, true});
            ended.emplace_back(row, tok, -inf, lp);
          } else if (static_cast<int64_t>(live.size()) < k_beam) {
            live.emplace_back(row, tok, sc, lp);
          }
        }
        for (size_t i = 0; live.size() < static_cast<size_t>(k_beam) && i < ended.size(); ++i) live.push_back(ended[i]);
        for (auto& [row, tok, sc, lp] : live) {
          parent_l.push_back(row); token_l.push_back(tok); score_l.push_back(sc); chosen_l.push_back(lp);
        }
      }
      std::vector<bool> done(nb);
      for (int64_t bi = 0; bi < nb; ++bi) {
        const int64_t si = alive[bi];
        if (step + 1 >= max_new[si]) {  // length cap: the live beams end here, unfinished
          for (int64_t r = bi * k_beam; r < (bi + 1) * k_beam; ++r)
            if (std::isfinite(score_l[r])) fin[si].push_back({score_l[r] / lp_now, position, parent_l[r], token_l[r], chosen_l[r], false});
          done[bi] = true;
          continue;
        }
        std::stable_sort(fin[si].begin(), fin[si].end(), [](const Fin& a, const Fin& b) { return -a.score < -b.score; });
        if (static_cast<int64_t>(fin[si].size()) > k_beam) fin[si].resize(k_beam);
        bool stop = false;
        if (static_cast<int64_t>(fin[si].size()) >= k_beam) {
          if (early_stopping) {
            stop = true;
          } else {
            const double best_live = score_l[bi * k_beam];
            const int64_t bound_len = alpha > 0 ? max_new[si] + prefix_len : new_len;
            stop = best_live / penalty(bound_len) <= fin[si].back().score;
          }
        }
        done[bi] = stop;
      }
      const auto opts = row_ids.options();
      Tensor parent = at::tensor(parent_l, opts);
      Tensor token = at::tensor(token_l, opts);
      Tensor new_scores = at::tensor(std::vector<float>(score_l.begin(), score_l.end()), scores.options());
      Tensor chosen = at::tensor(std::vector<float>(chosen_l.begin(), chosen_l.end()), row_lp.options());
      ++step;
      std::vector<int64_t> keep, kept;
      for (int64_t bi = 0; bi < nb; ++bi) {
        if (done[bi]) continue;
        kept.push_back(alive[bi]);
        for (int64_t kk = 0; kk < k_beam; ++kk) keep.push_back(bi * k_beam + kk);
      }
      const bool dropped = select_rows(hist, keep, std::move(kept), alive, parent, token, chosen, new_scores, scores);
      if (alive.empty()) break;
      reorder_kv(self_kv, spare, parent, pos);  // KVCache.reorder(parent, same_source=not dropped)
      if (dropped) drop_source_rows(parent, cross_kv, source_mask, cross_mask);
      if (!next_position(token, self_kv, pos, cross_kv, cross_mask, banned, n_alt, row_lp, row_ids, hist)) {
        bad_position = prefix_len + step;
        break;
      }
    }
    std::vector<Finished> finished;
    for (size_t si = 0; si < fin.size(); ++si)
      for (const Fin& f : fin[si]) finished.emplace_back(static_cast<int64_t>(si), f.score, f.position, f.row, f.token, f.token_lp, f.eos);
    return {hist.parents, hist.tokens, hist.chosens, hist.alt_ids, hist.alt_lps, finished, step, bad_position};
  }

 private:
  // search._History's per-step records, as the loops fill them.
  struct History {
    std::vector<Tensor> parents, tokens, chosens, alt_ids, alt_lps;
  };

  // What search.search does with a strategy's selection: the rows of sentences that are done leave the batch
  // (`keep`: the rows kept, `kept`: their sentences), the selection is recorded, the scores move on. Returns
  // whether rows left.
  static bool select_rows(History& hist, const std::vector<int64_t>& keep, std::vector<int64_t> kept,
                          std::vector<int64_t>& alive, Tensor& parent, Tensor& token, Tensor& chosen,
                          Tensor& new_scores, Tensor& scores) {
    const bool dropped = kept.size() < alive.size();
    if (dropped) {
      const Tensor index = at::tensor(keep, parent.options());
      parent = parent.index_select(0, index);
      token = token.index_select(0, index);
      chosen = chosen.index_select(0, index);
      new_scores = new_scores.index_select(0, index);
      alive = std::move(kept);
    }
    hist.parents.push_back(parent);
    hist.tokens.push_back(token);
    hist.chosens.push_back(chosen);
    scores = new_scores;
    return dropped;
  }

  // KVCache.reorder's source part when rows leave: the kept rows' cross keys/values and mask.
  static void drop_source_rows(const Tensor& index, Tensor& cross_kv, Tensor& source_mask, std::optional<Tensor>& cross_mask) {
    cross_kv = cross_kv.index_select(2, index);
    source_mask = source_mask.index_select(0, index);
    cross_mask = std::nullopt;  // attention.key_padding_mask: None when nothing is padding
    if (!source_mask.all().item<bool>()) cross_mask = source_mask.unsqueeze(1).unsqueeze(2);
  }

  // One step of the rows' chosen tokens and search.search's `record` of the next position (model.next_token_scores'
  // calls, the alternatives kept); false when a row's best log-prob is not finite.
  bool next_position(const Tensor& token, const Tensor& self_kv, int64_t& pos, const Tensor& cross_kv,
                     const std::optional<Tensor>& cross_mask, const Tensor& banned, int64_t n_alt, Tensor& row_lp,
                     Tensor& row_ids, History& hist) const {
    TORCH_CHECK(pos < self_kv.size(4), "KV cache capacity exceeded");
    const int64_t n_top = row_ids.size(1);
    Tensor logits = step(token.unsqueeze(1), self_kv, pos, cross_kv, cross_mask, false)[0];  // (N, 1, V)
    ++pos;
    Tensor logp = at::log_softmax(logits.select(1, 0), -1);  // (N, V)
    logp.index_fill_(-1, banned, -std::numeric_limits<double>::infinity());
    auto top = at::topk(logp, n_top, -1);
    row_lp = std::get<0>(top);
    row_ids = std::get<1>(top);
    if (!at::isfinite(row_lp.select(1, 0)).all().item<bool>()) return false;  // NaN ranks first in topk
    hist.alt_ids.push_back(n_top == n_alt ? row_ids : row_ids.slice(1, 0, n_alt));
    hist.alt_lps.push_back(n_top == n_alt ? row_lp : row_lp.slice(1, 0, n_alt));
    return true;
  }

  // KVCache.reorder's self-attention part: the rows `index` of the `filled` positions gathered into the spare
  // buffer (allocated once), the old buffer kept as the next spare. A fresh gather of the whole buffer at every
  // beam step would allocate and fault in the size of the cache each time (tens of MB for a batch of 32 x 5).
  static void reorder_kv(Tensor& self_kv, Tensor& spare, const Tensor& index, int64_t filled) {
    const int64_t n_new = index.size(0);
    if (!spare.defined() || spare.size(2) < n_new) {
      auto sizes = self_kv.sizes().vec();
      sizes[2] = n_new;
      spare = at::empty(sizes, self_kv.options());
    }
    Tensor dst = spare.slice(2, 0, n_new);  // (L, 2, N_new, H, T_max, d_k)
    Tensor out = dst.slice(4, 0, filled);
    at::index_select_out(out, self_kv.slice(4, 0, filled), 2, index);
    spare = self_kv;
    self_kv = dst;
  }

  // One query per row: q (N, H, 1, d_k), k/v (N, H, S, d_k) -> context (N, D), heads concatenated.
  Tensor attend(const Tensor& q, const Tensor& k, const Tensor& v, const std::optional<Tensor>& mask, bool need_weights,
                std::vector<Tensor>& keep, int64_t n) const {
    Tensor ctx;
    if (need_weights) {  // attention.attention_probabilities: softmax(QK^T / sqrt(d_k)), the row maximum subtracted
      Tensor scores = at::matmul(q, k.transpose(-2, -1)).div(std::sqrt(static_cast<double>(dk_)));  // (N, H, 1, S)
      if (mask) scores = scores.masked_fill(mask->bitwise_not(), -std::numeric_limits<double>::infinity());
      scores = scores.sub(scores.amax({-1}, true));
      Tensor weights = scores.exp();
      weights = weights.div(weights.sum(-1, true));
      keep.push_back(weights);
      ctx = at::matmul(weights, v);
    } else {
      ctx = at::scaled_dot_product_attention(q, k, v, mask);  // (N, H, 1, d_k)
    }
    return ctx.reshape({n, d_});
  }

  std::vector<Layer> layers_;
  Product logits_;
  std::optional<Norm> final_norm_;
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "tui-translate's decoder step and encoder pass in C++ (see fused.py)";
  m.attr("KERNELS") = py::dict(py::arg("w8") = static_cast<int64_t>(kW8), py::arg("split") = static_cast<int64_t>(kSplit),
                               py::arg("fbgemm") = static_cast<int64_t>(kFbgemm), py::arg("onednn") = static_cast<int64_t>(kOnednn),
                               py::arg("addmm") = static_cast<int64_t>(kAddmm));
  m.attr("ACTIVATIONS") = py::dict(py::arg("relu") = static_cast<int64_t>(kRelu), py::arg("gelu") = static_cast<int64_t>(kGelu),
                                   py::arg("gelu_new") = static_cast<int64_t>(kGeluTanh), py::arg("swish") = static_cast<int64_t>(kSilu),
                                   py::arg("silu") = static_cast<int64_t>(kSilu));
  py::class_<Encoder>(m, "Encoder")
      .def(py::init<int64_t, int64_t, bool, int64_t, Tensor, Tensor, double, int64_t>())
      .def("add_layer", &Encoder::add_layer)
      .def("set_final_norm", &Encoder::set_final_norm)
      .def("encode", &Encoder::encode, py::call_guard<py::gil_scoped_release>());
  py::class_<Step>(m, "Step")
      .def(py::init<int64_t, int64_t, bool, int64_t, Tensor, Tensor, double>())
      .def("add_layer", &Step::add_layer)
      .def("set_output", &Step::set_output)
      .def("step", &Step::step, py::call_guard<py::gil_scoped_release>())
      .def("greedy", &Step::greedy, py::call_guard<py::gil_scoped_release>())
      .def("beam", &Step::beam, py::call_guard<py::gil_scoped_release>());
}
