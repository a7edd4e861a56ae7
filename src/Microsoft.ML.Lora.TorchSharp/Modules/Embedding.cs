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
        bool use_rslora, LoraInitKind init, string adapter_name = DefaultAdapter, LoraConfig? config = null)
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
            AddAdapter(adapter_name, r, lora_alpha, 0.0, use_rslora, init, config);
            SetActive([adapter_name]);
        }
    }

    /// <summary>Size of the dictionary.</summary>
    public long num_embeddings { get; }

    /// <summary>Size of each embedding vector.</summary>
    public long embedding_dim { get; }

    /// <summary>The index whose row receives no gradient (neither in W nor in A), or null.</summary>
    public long? padding_idx { get; }

    private protected override Tensor BaseForward(Tensor input)
    {
        using var flat = input.dtype == ScalarType.Int64 ? input.reshape(-1) : input.reshape(-1).to(ScalarType.Int64);
        using var rows = weight.index_select(0, flat);
        return rows.view(input.shape.Append(embedding_dim).ToArray());
    }

    /// <summary>The ids pass unchanged (no cast, no dropout) to the branch.</summary>
    private protected override Tensor AdapterInput(Tensor x, ScalarType factorDtype, double dropout) => x;

    private protected override Tensor AdapterForward(Tensor x, Tensor a, Tensor b, int r)
    {
        using var flat = x.dtype == ScalarType.Int64 ? x.reshape(-1) : x.reshape(-1).to(ScalarType.Int64);
        using var table = LoraTable(a);
        using var down = table.index_select(0, flat);
        using var up = down.matmul(b.t());
        return up.view(x.shape.Append(embedding_dim).ToArray());
    }

    private protected override (Tensor a, Tensor b) CreateFactors(int r, LoraInitKind init)
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

        return (a, b);
    }

    private protected override Tensor DeltaWeight(Tensor a, Tensor b, int r, double scaling) => b.matmul(a).t().mul_(scaling);

    /// <summary>Aᵀ (num_embeddings × r); the padding row is detached so it gets no gradient, as F.embedding does.</summary>
    private Tensor LoraTable(Tensor a)
    {
        var table = a.t();
        if (padding_idx is not long p || !a.requires_grad)
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
