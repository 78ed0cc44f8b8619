// Unit 0 of the f64 token-KD kernels (see units.h): the divergences whose id % kUnits == 0.
#include "unit.cuh"

FDIV_TOKEN_KD_UNIT(double, 0)
