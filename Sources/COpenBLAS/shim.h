#ifndef MOE_COPENBLAS_SHIM_H
#define MOE_COPENBLAS_SHIM_H
// Debian ships OpenBLAS's cblas.h under the openblas-pthread include folder that pkg-config names.
#include <cblas.h>
#include <stddef.h>

// LAPACK's singular value decomposition, which libopenblas carries (Debian installs no lapack.h with it). The
// trailing lengths are the hidden Fortran lengths of the two character arguments.
void dgesvd_(const char *jobu, const char *jobvt, const int *m, const int *n, double *a, const int *lda, double *s,
             double *u, const int *ldu, double *vt, const int *ldvt, double *work, const int *lwork, int *info,
             size_t jobu_len, size_t jobvt_len);
#endif
