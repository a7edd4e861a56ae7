using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora;

/// <summary>The mechanics of <see cref="lora.add_weighted_adapter"/>.</summary>
internal static class WeightedAdapters
{
    internal static void Add(nn.Module model, IReadOnlyList<string> adapters, IReadOnlyList<double> weights, string adapter_name,
        string combination_type, int? svd_rank)
    {
        lora.CheckNewAdapterName(model, adapter_name);
        if (adapters.Count == 0 || adapters.Count != weights.Count)
        {
            throw new ArgumentException($"Give one weight per adapter: {adapters.Count} adapters, {weights.Count} weights.", nameof(weights));
        }

        var existing = lora.get_adapter_names(model);
        foreach (var name in adapters)
        {
            if (!existing.Contains(name))
            {
                throw new ArgumentException($"'{name}' is not an adapter of the model; it has [{string.Join(", ", existing)}].", nameof(adapters));
            }
        }

        foreach (var w in weights)
        {
            if (!double.IsFinite(w))
            {
                throw new ArgumentOutOfRangeException(nameof(weights), w, "Weights must be finite.");
            }
        }

        var kind = adapters.Count == 1 ? "linear" : combination_type; // as PEFT: one adapter is always combined linearly
        var layers = lora.LoraLayers(model).Where(l => adapters.Any(l.layer.HasAdapter)).ToList();
        var ranks = adapters.Select(a => layers.First(l => l.layer.HasAdapter(a)).layer.get_rank(a)).ToList();
        int newRank;
        switch (kind)
        {
            case "linear":
                if (ranks.Distinct().Count() != 1)
                {
                    throw new ArgumentException($"combination_type \"linear\" needs equal ranks, got [{string.Join(", ", ranks)}]; use \"cat\" or \"svd\".", nameof(adapters));
                }

                newRank = ranks[0];
                break;
            case "cat":
                newRank = ranks.Sum();
                break;
            case "svd":
                newRank = svd_rank ?? ranks.Max();
                if (newRank <= 0)
                {
                    throw new ArgumentOutOfRangeException(nameof(svd_rank), svd_rank, "svd_rank must be positive.");
                }

                break;
            default:
                throw new ArgumentException($"combination_type must be \"linear\", \"cat\" or \"svd\", got \"{combination_type}\".", nameof(combination_type));
        }

        foreach (var (path, layer) in layers)
        {
            if (kind != "linear" && (layer is Modules.MergedLinear || layer is Modules.LoraConvNd { groups: > 1 }
                || layer is Modules.LoraConvNd { factorization: LoraConvFactorization.Loralib }))
            {
                throw new ArgumentException(
                    $"Layer '{path}' ({layer.GetType().Name}{(layer is Modules.LoraConvNd c ? $", groups {c.groups}" : "")}) has block-structured factors; " +
                    $"combination_type \"{kind}\" cannot keep that structure. Use \"linear\".", nameof(combination_type));
            }

            var present = adapters.Where(layer.HasAdapter).ToList();
            if (kind == "linear" && present.Select(a => layer.get_rank(a)).Distinct().Count() != 1)
            {
                throw new ArgumentException(
                    $"combination_type \"linear\" needs equal ranks in every layer; layer '{path}' has ranks " +
                    $"[{string.Join(", ", present.Select(a => $"{a}: {layer.get_rank(a)}"))}] (rank_pattern?). Use \"cat\" or \"svd\".", nameof(adapters));
            }

            if (kind == "svd" && newRank > Math.Min(layer.get_lora_B(adapters.First(layer.HasAdapter)).shape[0], FlatA(layer.get_lora_A(adapters.First(layer.HasAdapter))).shape[1]))
            {
                throw new ArgumentOutOfRangeException(nameof(svd_rank), newRank, $"svd_rank exceeds the size of layer '{path}'.");
            }
        }

        foreach (var (_, layer) in layers)
        {
            var present = adapters.Select((a, i) => (a, w: weights[i])).Where(p => layer.HasAdapter(p.a)).ToList();
            var dropout = layer.DropoutOf(present[0].a);
            using var scope = torch.NewDisposeScope();
            using var noGrad = torch.no_grad();
            Tensor newA, newB;
            var templateA = layer.get_lora_A(present[0].a);
            var templateB = layer.get_lora_B(present[0].a);
            switch (kind)
            {
                case "linear":
                {
                    newA = torch.zeros_like(templateA, dtype: ScalarType.Float32);
                    newB = torch.zeros_like(templateB, dtype: ScalarType.Float32);
                    // As PEFT: each factor scaled by √|weight·scaling|, the sign of a negative weight on A only (on both
                    // it would cancel), so a single adapter with weight w gives exactly w·ΔW.
                    foreach (var (a, w) in present)
                    {
                        var weighted = w * layer.get_scaling(a);
                        var factor = Math.Sqrt(Math.Abs(weighted));
                        newA.add_(layer.get_lora_A(a).to(ScalarType.Float32), alpha: weighted < 0 ? -factor : factor);
                        newB.add_(layer.get_lora_B(a).to(ScalarType.Float32), alpha: factor);
                    }

                    break;
                }

                case "cat":
                {
                    // Rows (of A) / columns (of B) of adapters absent from this layer stay zero, as PEFT.
                    long[] aShape = [newRank, .. templateA.shape[1..]];
                    long[] bShape = [templateB.shape[0], newRank, .. templateB.shape[2..]];
                    newA = torch.zeros(aShape, dtype: ScalarType.Float32, device: templateA.device);
                    newB = torch.zeros(bShape, dtype: ScalarType.Float32, device: templateB.device);
                    long offset = 0;
                    for (var i = 0; i < adapters.Count; i++)
                    {
                        if (!layer.HasAdapter(adapters[i]))
                        {
                            continue;
                        }

                        var a = layer.get_lora_A(adapters[i]).to(ScalarType.Float32);
                        var b = layer.get_lora_B(adapters[i]).to(ScalarType.Float32);
                        var r = a.shape[0];
                        newA.narrow(0, offset, r).copy_(a.mul(weights[i] * layer.get_scaling(adapters[i])));
                        newB.narrow(1, offset, r).copy_(b);
                        offset += r;
                    }

                    break;
                }

                default:
                {
                    // ΔW in factor layout: (out × r)·(r × rest), summed with the weights, then truncated SVD.
                    Tensor? delta = null;
                    foreach (var (a, w) in present)
                    {
                        var term = FlatB(layer.get_lora_B(a)).to(ScalarType.Float32).matmul(FlatA(layer.get_lora_A(a)).to(ScalarType.Float32))
                            .mul_(w * layer.get_scaling(a));
                        delta = delta is null ? term : delta.add_(term);
                    }

                    var (u, s, vh) = torch.linalg.svd(delta!.to(ScalarType.Float64), fullMatrices: false);
                    var us = u.narrow(1, 0, newRank).mul(s.narrow(0, 0, newRank).unsqueeze(0));
                    long[] aShape = [newRank, .. templateA.shape[1..]];
                    long[] bShape = [templateB.shape[0], newRank, .. templateB.shape[2..]];
                    newA = vh.narrow(0, 0, newRank).to(ScalarType.Float32).reshape(aShape);
                    newB = us.to(ScalarType.Float32).reshape(bShape);
                    break;
                }
            }

            layer.AddAdapter(adapter_name, newRank, newRank, dropout, rslora: false, LoraInitKind.Default, config: null);
            var on = layer.active_adapters.Contains(adapter_name);
            var targetA = layer.get_lora_A(adapter_name);
            var targetB = layer.get_lora_B(adapter_name);
            targetA.copy_(newA);
            targetB.copy_(newB);
            targetA.requires_grad = on;
            targetB.requires_grad = on;
        }
    }

    /// <summary>A as a matrix r × (everything else).</summary>
    private static Tensor FlatA(Tensor a) => a.reshape(a.shape[0], -1);

    /// <summary>B as a matrix out × r (trailing 1×…×1 kernel dims of a conv B dropped).</summary>
    private static Tensor FlatB(Tensor b) => b.reshape(b.shape[0], b.shape[1]);
}
