// Multiply-adds per cycle of the three AVX-512 instructions our kernels are built on, on one core: the int8 dot
// product (VNNI vpdpbusd: 64 per instruction), the float32 FMA (16) and the bf16 dot product (vdpbf16ps: 32).
// Twelve independent accumulators per loop hide each instruction's latency, so the loop runs at its throughput.
// Why: attention runs on FMAs (float32, for accuracy) while the GEMMs run on vpdpbusd, so how many of each a core
// retires per cycle decides how much of a forward pass attention takes on that CPU (the README's speed section).
//
//   cc -O2 scripts/instruction-throughput.c -o /tmp/instruction-throughput && /tmp/instruction-throughput
#include <stdio.h>
#include <time.h>

static double seconds(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + t.tv_nsec * 1e-9;
}

#define TWELVE(op)                                                                                                 \
  op " %%zmm0, %%zmm1, %%zmm2\n" op " %%zmm0, %%zmm1, %%zmm3\n" op " %%zmm0, %%zmm1, %%zmm4\n" op                  \
     " %%zmm0, %%zmm1, %%zmm5\n" op " %%zmm0, %%zmm1, %%zmm6\n" op " %%zmm0, %%zmm1, %%zmm7\n" op                   \
     " %%zmm0, %%zmm1, %%zmm8\n" op " %%zmm0, %%zmm1, %%zmm9\n" op " %%zmm0, %%zmm1, %%zmm10\n" op                  \
     " %%zmm0, %%zmm1, %%zmm11\n" op " %%zmm0, %%zmm1, %%zmm12\n" op " %%zmm0, %%zmm1, %%zmm13\n"

#define RATE(op, macs)                                                                                             \
  do {                                                                                                             \
    long loops = 50000000;                                                                                         \
    const double start = seconds();                                                                                \
    __asm__ volatile("vpxord %%zmm0, %%zmm0, %%zmm0\n vpxord %%zmm1, %%zmm1, %%zmm1\n1:\n" TWELVE(op)               \
                     "dec %0\n jnz 1b\n"                                                                           \
                     : "+r"(loops)::"xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", \
                       "xmm10", "xmm11", "xmm12", "xmm13", "cc");                                                  \
    const double rate = 50000000.0 * 12 / (seconds() - start);                                                     \
    printf("%-12s %5.2f G instructions/s  %6.1f G multiply-adds/s\n", op, rate / 1e9, rate * (macs) / 1e9);        \
  } while (0)

int main(void) {
  __builtin_cpu_init();
  if (!__builtin_cpu_supports("avx512vnni") || !__builtin_cpu_supports("avx512bf16")) {
    fprintf(stderr, "this CPU lacks AVX-512 VNNI or BF16\n");
    return 1;
  }
  RATE("vpdpbusd", 64);
  RATE("vfmadd231ps", 16);
  RATE("vdpbf16ps", 32);
  return 0;
}
