"""`backend="triton"` of the decode steps: `selective_state_update` as one launch, the mixer step as two
(triton_kernels.py). CUDA tensors, or CPU tensors under Triton's interpreter. Arguments are validated by
`mambalab.ops.state_update`. The mixer step's x_proj and dt_proj accumulate in float32 (the reference rounds
their outputs to the weights' dtype). The 1-D parameters (D, biases) go to the kernels contiguous (`dense`): they
are read without a stride.
"""

from __future__ import annotations

from mambalab.ops.triton import dense


def selective_state_update_triton(state, x_t, dt_t, A, B_t, C_t, D=None, z_t=None, dt_bias=None, dt_softplus=False,
                                  state_batch_indices=None):
    from mambalab.ops import triton as kernels

    kernels.check_device("selective_state_update", x_t)
    from mambalab.ops.state_update.triton_kernels import state_update

    return state_update(state, x_t, dt_t, A, B_t, C_t, dense(D), z_t, dense(dt_bias), dt_softplus,
                        state_batch_indices)


def mixer_step_triton(x_t, z_t, conv_state, ssm_state, conv_weight, conv_bias, x_proj_weight, dt_proj_weight,
                      dt_proj_bias, A_log, D=None, state_batch_indices=None):
    from mambalab.ops import triton as kernels

    kernels.check_device("mixer_step", x_t)
    from mambalab.ops.state_update.triton_kernels import mixer_step

    return mixer_step(x_t, z_t, conv_state, ssm_state, conv_weight, dense(conv_bias), x_proj_weight,
                      dt_proj_weight, dense(dt_proj_bias), A_log, dense(D), state_batch_indices)
