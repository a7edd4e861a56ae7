using TorchSharp;
using static TorchSharp.torch;
using static TorchSharp.torch.autograd;

namespace Microsoft.ML.Lora;

/// <summary>
/// The autograd node behind <c>lora.checkpoint</c>: forward runs the segment without recording a graph and keeps
/// only its input (and the random-number state, so dropout draws the same masks again); backward runs the segment a
/// second time with a graph and returns the gradients of the input and of the segment's trainable parameters.
/// </summary>
/// <remarks>
/// Arguments of <c>apply</c>: the segment function (over an array of inputs), the number of inputs, the inputs, then the
/// trainable parameters. Inputs are kept as saved variables (a reference of their own), so the recomputation works even
/// after the caller's dispose scope released its handles (an attention mask made inside a model's forward). Passing the
/// parameters as inputs (rather than letting a nested <c>backward()</c> accumulate into them) keeps the node in the
/// graph even when the input does not require a gradient (the first encoder layer after frozen embeddings), and lets
/// the autograd engine accumulate parameter gradients as it does for any other node.
/// </remarks>
internal sealed class CheckpointFunction : SingleTensorFunction<CheckpointFunction>
{
    private const string FunctionKey = "function";
    private const string CpuRngStateKey = "cpu_rng_state";
    private const string CudaSeedKey = "cuda_seed";
    private const string InputsRequireGradKey = "inputs_require_grad";
    private const string ParametersKey = "parameters";

    public override string Name => "LoraCheckpoint";

    public override Tensor forward(AutogradContext ctx, params object[] vars)
    {
        var function = (Func<Tensor[], Tensor>)vars[0];
        int inputCount = (int)vars[1];
        var inputs = vars.Skip(2).Take(inputCount).Cast<Tensor>().ToArray();
        ctx.save_data(FunctionKey, function);
        ctx.save_data(InputsRequireGradKey, inputs.Select(t => t.requires_grad).ToArray());
        ctx.save_data(ParametersKey, vars.Skip(2 + inputCount).Cast<Tensor>().ToArray());
        ctx.save_for_backward([.. inputs]);

        // Dropout on the CPU draws from the default CPU generator: keep its exact state and replay it. TorchSharp cannot
        // read a CUDA generator's state, so on CUDA the segment's generator is seeded from the CPU stream instead (the
        // whole run stays deterministic under torch.manual_seed), and seeded again for the recomputation.
        if (inputs[0].device.type == DeviceType.CUDA)
        {
            using var seedTensor = randint(long.MaxValue, [1], dtype: ScalarType.Int64);
            long seed = seedTensor.item<long>();
            ctx.save_data(CudaSeedKey, seed);
            cuda.manual_seed(seed);
        }
        else
        {
            using var state = random.get_rng_state();
            ctx.save_data(CpuRngStateKey, state.data<byte>().ToArray());
        }
        return function(inputs);
    }

    public override List<Tensor> backward(AutogradContext ctx, Tensor grad_output)
    {
        var function = (Func<Tensor[], Tensor>)ctx.get_data(FunctionKey);
        var requiresGrad = (bool[])ctx.get_data(InputsRequireGradKey);
        var parameters = (Tensor[])ctx.get_data(ParametersKey);
        GradientHandOver.ReleaseHandedOver();

        // One entry per apply argument: none for the function and the count, then each input, then each parameter.
        var result = new List<Tensor>(2 + requiresGrad.Length + parameters.Length) { null!, null! };
        using (var scope = NewDisposeScope())
        using (enable_grad())
        {
            var inputs = ctx.get_saved_variables().Select((saved, i) => saved.detach().requires_grad_(requiresGrad[i])).ToArray();
            Tensor output;
            if (ctx.get_data(CpuRngStateKey) is byte[] rngState)
            {
                var current = random.get_rng_state();
                random.set_rng_state(tensor(rngState, ScalarType.Byte));
                try
                {
                    output = function(inputs);
                }
                finally
                {
                    random.set_rng_state(current);
                }
            }
            else
            {
                cuda.manual_seed((long)ctx.get_data(CudaSeedKey));
                output = function(inputs);
            }

            var targets = inputs.Where((_, i) => requiresGrad[i]).Concat(parameters).ToList();
            var grads = targets.Count == 0 ? [] : grad([output], targets, [grad_output], allow_unused: true);
            int next = 0;
            for (int i = 0; i < inputs.Length; i++)
            {
                result.Add(requiresGrad[i] ? GradientHandOver.HandOver(grads[next++]) : null!);
            }

            for (int i = 0; i < parameters.Length; i++)
            {
                result.Add(GradientHandOver.HandOver(grads[next++]));
            }
        }

        // The engine's handle of the incoming gradient: released with the outgoing ones.
        GradientHandOver.HandOver(grad_output);
        return result;
    }
}
