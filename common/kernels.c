/* Fused CPU kernels for the aggregators' per-client sums (common/native.py compiles and loads this file).
 *
 * Each add kernel adds K clients into the aggregator's sums over the coordinates [lo, hi), block by block:
 * a block of the sums (`block` coordinates) stays in cache while every client's block streams through it,
 * two clients per pass: a coordinate's sums are loaded once, updated by client k then client k + 1 (the
 * order of `add`), and stored once. The torch path needs one op per sum and client, each a pass over the
 * block. The arithmetic is that of the torch ops they replace, op for op and rounding for rounding, on
 * CPUs where torch's own float kernels use fused multiply-add (AVX2 / AVX-512):
 *   x.addcmul_(a, b, value=w)  ==  x = fmaf(w * a, b, x)
 *   x.add_(a, alpha=w)         ==  x = fmaf(a, w, x)
 * Built with -ffp-contract=off, so the compiler fuses nothing else.
 *
 * `fresh`: the sums are still to be zeroed (the aggregator was reset); the first client writes them from
 * 0 instead (0 + ...: the same bits as zeroing first, one pass less).
 */
#include <math.h>
#include <stdint.h>

#define NOINLINE __attribute__((noinline))

/* One client's (theta t, Fisher f, weight w) update of a coordinate's FisherMean sums:
 * num += w f t, den += w f, tot += w t (common.aggregate.FisherMean._add_block). */
#define FISHER_STEP(t, f, w)         \
    a = fmaf((w) * (f), (t), a);     \
    b = fmaf((f), (w), b);           \
    c = fmaf((t), (w), c)

/* Clients 0 and, if `two`, 1 into the sums' n coordinates. */
static NOINLINE void fisher_pass(float *restrict num, float *restrict den, float *restrict tot,
                                 const float *restrict t0, const float *restrict f0, float w0,
                                 const float *restrict t1, const float *restrict f1, float w1,
                                 int64_t n, int two, int fresh) {
    for (int64_t i = 0; i < n; i++) {
        float a = fresh ? 0.0f : num[i], b = fresh ? 0.0f : den[i], c = fresh ? 0.0f : tot[i];
        FISHER_STEP(t0[i], f0[i], w0);
        if (two) {
            FISHER_STEP(t1[i], f1[i], w1);
        }
        num[i] = a;
        den[i] = b;
        tot[i] = c;
    }
}

void fisher_add(float *num, float *den, float *tot, const float *const *thetas, const float *const *fishers,
                const float *weights, int64_t n_clients, int64_t fresh, int64_t lo, int64_t hi, int64_t block) {
    for (int64_t b = lo; b < hi; b += block) {
        int64_t n = hi - b < block ? hi - b : block;
        for (int64_t k = 0; k < n_clients; k += 2) {
            int two = k + 1 < n_clients;
            int64_t k1 = two ? k + 1 : k;
            fisher_pass(num + b, den + b, tot + b, thetas[k] + b, fishers[k] + b, weights[k],
                        thetas[k1] + b, fishers[k1] + b, weights[k1], n, two, fresh && k == 0);
        }
    }
}

/* FisherMean.result: out = den > 0 ? (num + mean eps) / (den + eps) : mean, mean = tot / total, with the
 * torch ops' roundings (no fused multiply-add); returns how many coordinates have den <= eps. */
int64_t fisher_result(const float *restrict num, const float *restrict den, const float *restrict tot,
                      float *restrict out, float total, float eps, int64_t lo, int64_t hi) {
    int64_t at_floor = 0;
    for (int64_t i = lo; i < hi; i++) {
        float mean = tot[i] / total;
        float q = (num[i] + mean * eps) / (den[i] + eps);
        out[i] = den[i] > 0.0f ? q : mean;
        at_floor += den[i] <= eps;
    }
    return at_floor;
}

/* One client's (theta t, mask m cast to float, weight w) update of a coordinate's MaskedMean sums:
 * num += w m t, cnt += w m (common.aggregate.MaskedMean._add_masked). */
#define MASKED_STEP(t, m, w)         \
    a = fmaf((w) * (m), (t), a);     \
    b = fmaf((m), (w), b)

/* One add kernel per mask type: bytes (a torch bool or uint8 mask) or float32. */
#define MASKED_KERNEL(NAME, MASK_T)                                                                          \
    static NOINLINE void NAME##_pass(float *restrict num, float *restrict cnt,                               \
                                     const float *restrict t0, const MASK_T *restrict m0, float w0,          \
                                     const float *restrict t1, const MASK_T *restrict m1, float w1,          \
                                     int64_t n, int two, int fresh) {                                        \
        for (int64_t i = 0; i < n; i++) {                                                                    \
            float a = fresh ? 0.0f : num[i], b = fresh ? 0.0f : cnt[i];                                      \
            MASKED_STEP(t0[i], (float)m0[i], w0);                                                            \
            if (two) {                                                                                       \
                MASKED_STEP(t1[i], (float)m1[i], w1);                                                        \
            }                                                                                                \
            num[i] = a;                                                                                      \
            cnt[i] = b;                                                                                      \
        }                                                                                                    \
    }                                                                                                        \
    void NAME(float *num, float *cnt, const float *const *thetas, const MASK_T *const *masks,                 \
              const float *weights, int64_t n_clients, int64_t fresh, int64_t lo, int64_t hi, int64_t block) { \
        for (int64_t b = lo; b < hi; b += block) {                                                           \
            int64_t n = hi - b < block ? hi - b : block;                                                     \
            for (int64_t k = 0; k < n_clients; k += 2) {                                                     \
                int two = k + 1 < n_clients;                                                                 \
                int64_t k1 = two ? k + 1 : k;                                                                \
                NAME##_pass(num + b, cnt + b, thetas[k] + b, masks[k] + b, weights[k],                       \
                            thetas[k1] + b, masks[k1] + b, weights[k1], n, two, fresh && k == 0);            \
            }                                                                                                \
        }                                                                                                    \
    }

MASKED_KERNEL(masked_add_u8, uint8_t)
MASKED_KERNEL(masked_add_f32, float)

/* MaskedMean.result: out = cnt > 0 ? num / max(cnt, tiny) : fallback. `out` may be `fallback` (the result
 * written over the global parameters), so neither is restrict. */
void masked_result(const float *restrict num, const float *restrict cnt, const float *fallback, float *out,
                   float tiny, int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; i++) {
        float q = num[i] / (cnt[i] > tiny ? cnt[i] : tiny);
        out[i] = cnt[i] > 0.0f ? q : fallback[i];
    }
}
