#ifndef MOE_CMPI_SHIM_H
#define MOE_CMPI_SHIM_H
#include <mpi.h>

// OpenMPI's handles are casts of global objects (`(MPI_Comm)&ompi_mpi_comm_world`), which Swift cannot import.
static inline MPI_Comm moe_comm_world(void) { return MPI_COMM_WORLD; }
static inline MPI_Datatype moe_byte(void) { return MPI_BYTE; }
static inline MPI_Datatype moe_int(void) { return MPI_INT; }
static inline MPI_Datatype moe_long_long(void) { return MPI_LONG_LONG; }
static inline MPI_Op moe_op_max(void) { return MPI_MAX; }
static inline MPI_Op moe_op_sum(void) { return MPI_SUM; }
static inline MPI_Errhandler moe_errors_return(void) { return MPI_ERRORS_RETURN; }
static inline MPI_Status *moe_status_ignore(void) { return MPI_STATUS_IGNORE; }
static inline MPI_Request moe_request_null(void) { return MPI_REQUEST_NULL; }
#endif
