/** The CLI's exit codes; stable for scripts. */
export const EXIT = {
  OK: 0,
  /** Unexpected failure. */
  FAILURE: 1,
  /** Bad command line. */
  USAGE: 2,
  /** The thing named does not exist (404). */
  NOT_FOUND: 3,
  /** Conflict with the current state (409). */
  CONFLICT: 4,
  /** The daemon could not be reached. */
  UNREACHABLE: 5,
  /** The request was accepted but the operation failed. */
  OPERATION_FAILED: 6,
  /** Rejected as invalid (400/422) or unauthorized (401). */
  REJECTED: 7,
} as const;
