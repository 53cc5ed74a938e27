# One bounded run of a fuzz target, for the suite (tests/CMakeLists.txt):
#   cmake -DFUZZER=<binary> -DSEEDS=<corpus dir> -DWORK=<dir> -DSECONDS=4 -P run.cmake
# New inputs go to WORK/corpus (kept between runs, never into the source
# tree); a crash is written to WORK/artifacts/ and fails the test, with the
# command that reproduces it.
file(MAKE_DIRECTORY ${WORK}/corpus ${WORK}/artifacts)
execute_process(
  COMMAND ${FUZZER} -max_total_time=${SECONDS} -rss_limit_mb=512 -timeout=10 -print_final_stats=1
          -artifact_prefix=${WORK}/artifacts/ ${WORK}/corpus ${SEEDS}
  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
string(REGEX MATCH "stat::number_of_executed_units: *[0-9]+" runs "${out}")
string(REGEX REPLACE ".* " "" runs "${runs}")
if(NOT rc EQUAL 0)
  message("${out}")
  message(FATAL_ERROR "${FUZZER} found a failing input (in ${WORK}/artifacts/); "
                      "reproduce it with: ${FUZZER} ${WORK}/artifacts/<file>")
endif()
message("${FUZZER}: ${runs} executions in ${SECONDS} s, no failure")
