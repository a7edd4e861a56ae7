using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Modules;

/// <summary>
/// An embedding with a low-rank update (loralib's <c>lora.Embedding</c>): <c>y = W[x] + (Aᵀ[x])·Bᵀ·scaling</c> with W
/// (num_embeddings × embedding_dim) frozen, A (r × num_embeddings) starting at zero and B (embedding_dim × r) normal.
/// </summary>
public sealed class Embedding : LoraLayer
{
    internal Embedding(Parameter weight, int r, double lora_alpha, bool merge_weights, long? padding_idx,
        bool use_rslora, LoraInitKind init)
        : base(nameof(Embedding), weight, null, r, lora_alpha, 0.0, merge_weights, use_rslora)
    {
        if (weight.dim() != 2)
        {
            throw new ArgumentException($"An embedding weight must be 2-D, got shape [{string.Join(", ", weight.shape)}].", nameof(weight));
        }

        num_embeddings = weight.shape[0];
        embedding_dim = weight.shape[1];
        if (padding_idx is long p && (p < -num_embeddings || p >= num_embeddings))
        {
            throw new ArgumentOutOfRangeException(nameof(padding_idx), p, $"padding_idx must be within [{-num_embeddings}, {num_embeddings}).");
        }

        this.padding_idx = padding_idx is long q && q < 0 ? q + num_embeddings : padding_idx;

        if (r > 0)
        {
            var dtype = LoraArguments.FactorDtype(weight.dtype);
            var a = torch.zeros(r, num_embeddings, dtype: dtype, device: weight.device);
            var b = torch.empty(embedding_dim, r, dtype: dtype, device: weight.device);
            using (torch.no_grad())
            {
                nn.init.normal_(b);
                if (init == LoraInitKind.Random)
                {
                    nn.init.normal_(a);
                }
            }

            lora_A = LoraArguments.NewParameter(a);
            lora_B = LoraArguments.NewParameter(b);
        }
    }

    /// <summary>Size of the dictionary.</summary>
    public long num_embeddings { get; }

    /// <summary>Size of each embedding vector.</summary>
    public long embedding_dim { get; }

    /// <summary>The index whose row receives no gradient (neither in W nor in A), or null.</summary>
    public long? padding_idx { get; }

    /// <summary>Looks up the embeddings of the int64 indices <paramref name="input"/>; returns (…, embedding_dim).</summary>
    /// <param name="input">Indices of any shape.</param>
    /// <returns>The embeddings.</returns>
    public override Tensor forward(Tensor input)
    {
        if (merged)
        {
            RefreshMergedDelta();
        }

        using var flat = input.dtype == ScalarType.Int64 ? input.reshape(-1) : input.reshape(-1).to(ScalarType.Int64);
        var shape = input.shape.Append(embedding_dim).ToArray();
        using var rows = weight.index_select(0, flat);
        var result = rows.view(shape);
        if (r == 0 || merged)
        {
            return result;
        }

        using var table = LoraTable();
        using var down = table.index_select(0, flat);
        using var up = down.matmul(lora_B!.t());
        using var update = up.dtype == result.dtype ? up.view(shape) : up.to(result.dtype).view(shape);
        return result.add(update, alpha: scaling);
    }

    private protected override Tensor DeltaWeight(Tensor a, Tensor b) => b.matmul(a).t().mul_(scaling);

    /// <summary>Aᵀ (num_embeddings × r); the padding row is detached so it gets no gradient, as F.embedding does.</summary>
    private Tensor LoraTable()
    {
        var table = lora_A!.t();
        if (padding_idx is not long p || !lora_A.requires_grad)
        {
            return table;
        }

        using var keep = torch.ones(num_embeddings, 1, dtype: table.dtype, device: table.device);
        keep[p].zero_();
        using var kept = table.mul(keep);
        using var frozen = table.detach().mul(keep.neg().add_(1));
        table.Dispose();
        return kept.add(frozen);
    }
}
