# Every tests/test_*.c is one unit-test executable and one ctest case (label "unit");
# every tests/cli_*.sh is a ctest case run as `bash SCRIPT path/to/ssdistill` (label "cli").
# Both see SSDISTILL_DATA and SSDISTILL_BIN in their environment.
set(SD_TEST_ENV "SSDISTILL_DATA=${SSDISTILL_DATA};SSDISTILL_BIN=$<TARGET_FILE:ssdistill>;SSDISTILL_THREADS=2")

file(GLOB SD_TEST_SOURCES CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/test_*.c)
foreach(src ${SD_TEST_SOURCES})
  get_filename_component(name ${src} NAME_WE)
  add_executable(${name} ${src})
  target_link_libraries(${name} PRIVATE ssd_core)
  set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS unit ENVIRONMENT "${SD_TEST_ENV}" TIMEOUT 300)
endforeach()

# tests/gpu/test_*.{c,cu}: CUDA kernels against the CPU reference (label "gpu"); they exit 77
# (skipped) where no GPU is present, so CI builds them and the H200 runs them.
if(SD_CUDA_ON)
  file(GLOB SD_GPU_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/gpu/test_*.c ${CMAKE_SOURCE_DIR}/tests/gpu/test_*.cu)
  foreach(src ${SD_GPU_TESTS})
    get_filename_component(name ${src} NAME_WE)
    set(name gpu_${name})
    add_executable(${name} ${src})
    target_link_libraries(${name} PRIVATE ssd_core)
    set_target_properties(${name} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/tests)
    add_test(NAME ${name} COMMAND ${name})
    set_tests_properties(${name} PROPERTIES LABELS gpu ENVIRONMENT "${SD_TEST_ENV}" TIMEOUT 600 SKIP_RETURN_CODE 77)
  endforeach()
  # data parallelism end to end (one GPU: the NCCL path against the plain run; two: 2 ranks)
  add_test(NAME gpu_dist COMMAND bash ${CMAKE_SOURCE_DIR}/tests/gpu/dist_gpu.sh $<TARGET_FILE:ssdistill>)
  set_tests_properties(gpu_dist PROPERTIES LABELS gpu ENVIRONMENT "${SD_TEST_ENV}" TIMEOUT 900 SKIP_RETURN_CODE 77)
endif()

file(GLOB SD_CLI_TESTS CONFIGURE_DEPENDS ${CMAKE_SOURCE_DIR}/tests/cli_*.sh)
foreach(script ${SD_CLI_TESTS})
  get_filename_component(name ${script} NAME_WE)
  add_test(NAME ${name} COMMAND bash ${script} $<TARGET_FILE:ssdistill>)
  set_tests_properties(${name} PROPERTIES LABELS cli ENVIRONMENT "${SD_TEST_ENV}" TIMEOUT 300)
endforeach()

# Parity with Hugging Face transformers: every teacher reference, directly and through convert.
foreach(model stories260K tiny-llama-gqa tiny-llama-bf16 tiny-qwen2)
  set(dir ${SSDISTILL_DATA}/hf/${model})
  add_test(NAME parity_${model} COMMAND ssdistill check-ref --model ${dir} ${dir}/reference.safetensors)
  add_test(NAME parity_${model}_h5
           COMMAND bash ${CMAKE_SOURCE_DIR}/tests/parity_via_h5.sh $<TARGET_FILE:ssdistill> ${dir})
  set_tests_properties(parity_${model} parity_${model}_h5 PROPERTIES LABELS parity ENVIRONMENT "${SD_TEST_ENV}" TIMEOUT 300)
endforeach()
add_test(NAME parity_stories260K_llama2c
         COMMAND ssdistill check-ref --model ${SSDISTILL_DATA}/llama2c-stories260K/stories260K.bin
                 ${SSDISTILL_DATA}/hf/stories260K/reference.safetensors)
set_tests_properties(parity_stories260K_llama2c PROPERTIES LABELS parity ENVIRONMENT "${SD_TEST_ENV}" TIMEOUT 300)

# A standard Mamba-2 student (HF Mamba2ForCausalLM) against transformers' outputs.
add_test(NAME parity_tiny-mamba2
         COMMAND ssdistill check-ref --model ${SSDISTILL_DATA}/hf/tiny-mamba2 ${SSDISTILL_DATA}/hf/tiny-mamba2/reference.safetensors)
add_test(NAME parity_tiny-mamba2_h5
         COMMAND bash ${CMAKE_SOURCE_DIR}/tests/parity_via_h5.sh $<TARGET_FILE:ssdistill> ${SSDISTILL_DATA}/hf/tiny-mamba2)
set_tests_properties(parity_tiny-mamba2 parity_tiny-mamba2_h5 PROPERTIES LABELS parity ENVIRONMENT "${SD_TEST_ENV}" TIMEOUT 300)
