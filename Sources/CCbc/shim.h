#ifndef MOE_CCBC_SHIM_H
#define MOE_CCBC_SHIM_H
// CBC's C interface (Debian's coinor-libcbc-dev 2.10); pkg-config `cbc` puts /usr/include/coin on the path.
#include <Cbc_C_Interface.h>
#endif
