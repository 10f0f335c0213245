#ifndef MOE_COPENBLAS_SHIM_H
#define MOE_COPENBLAS_SHIM_H
// Debian ships OpenBLAS's cblas.h under the openblas-pthread include folder that pkg-config names.
#include <cblas.h>
#endif
