// The ISA clones of the CPU hot loops, decided once: GCC compiles each FDIV_CPU_CLONES function for
// x86-64-v4 (AVX-512), x86-64-v3 (AVX2, FMA) and the baseline, and picks one at load time (ifunc), so one
// wheel runs on any x86-64 and uses the widest vectors the CPU has. target_clones does not apply to
// templates: put it on non-template entry points that call an always-inline template.
#pragma once

// FDIV_NO_CPU_CLONES (a development knob) compiles one version for whatever -march the build gives.
#if defined(__x86_64__) && !defined(__clang__) && !defined(FDIV_NO_CPU_CLONES)
#define FDIV_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define FDIV_CPU_CLONES
#endif
