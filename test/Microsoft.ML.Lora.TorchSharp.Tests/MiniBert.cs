using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// A tiny BERT-shaped model whose module paths follow Hugging Face's BertModel: <c>embeddings.word_embeddings</c>,
/// <c>encoder.layer.N.attention.self.query|key|value</c>, <c>encoder.layer.N.attention.output.dense</c>, plus a <c>classifier</c>.
/// </summary>
internal sealed class MiniBert : nn.Module<Tensor, Tensor>
{
    private readonly Embeddings embeddings;
    private readonly Encoder encoder;
    private readonly nn.Module<Tensor, Tensor> classifier;

    public MiniBert(int vocab = 11, int hidden = 4, int layers = 2) : base(nameof(MiniBert))
    {
        embeddings = new Embeddings(vocab, hidden);
        encoder = new Encoder(hidden, layers);
        classifier = nn.Linear(hidden, 2);
        RegisterComponents();
    }

    /// <summary>Builds a model with weights from <paramref name="seed"/>, so two calls give the same base model.</summary>
    public static MiniBert Create(long seed)
    {
        torch.manual_seed(seed);
        return new MiniBert();
    }

    public static Tensor Ids() => tensor(new long[] { 1, 5, 7, 2, 0, 10, 3, 3, 9, 4, 6, 8 }, 3, 4);

    public override Tensor forward(Tensor ids)
    {
        var h = embeddings.call(ids);
        return classifier.call(encoder.call(h).mean([1]));
    }

    /// <summary>The module at <paramref name="path"/>.</summary>
    public nn.Module Module(string path) => named_modules().First(m => m.name == path).module;

    private sealed class Embeddings : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> word_embeddings;

        public Embeddings(int vocab, int hidden) : base(nameof(Embeddings))
        {
            word_embeddings = nn.Embedding(vocab, hidden);
            RegisterComponents();
        }

        public override Tensor forward(Tensor ids) => word_embeddings.call(ids);
    }

    private sealed class Encoder : nn.Module<Tensor, Tensor>
    {
        private readonly TorchSharp.Modules.ModuleList<Layer> layer;

        public Encoder(int hidden, int layers) : base(nameof(Encoder))
        {
            layer = nn.ModuleList(Enumerable.Range(0, layers).Select(_ => new Layer(hidden)).ToArray());
            RegisterComponents();
        }

        public override Tensor forward(Tensor h)
        {
            foreach (var l in layer)
            {
                h = l.call(h);
            }

            return h;
        }
    }

    private sealed class Layer : nn.Module<Tensor, Tensor>
    {
        private readonly Attention attention;

        public Layer(int hidden) : base(nameof(Layer))
        {
            attention = new Attention(hidden);
            RegisterComponents();
        }

        public override Tensor forward(Tensor h) => attention.call(h);
    }

    private sealed class Attention : nn.Module<Tensor, Tensor>
    {
        private readonly SelfAttention self;
        private readonly Output output;

        public Attention(int hidden) : base(nameof(Attention))
        {
            self = new SelfAttention(hidden);
            output = new Output(hidden);
            RegisterComponents();
        }

        public override Tensor forward(Tensor h) => h + output.call(self.call(h));
    }

    private sealed class SelfAttention : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> query;
        private readonly nn.Module<Tensor, Tensor> key;
        private readonly nn.Module<Tensor, Tensor> value;

        public SelfAttention(int hidden) : base(nameof(SelfAttention))
        {
            query = nn.Linear(hidden, hidden);
            key = nn.Linear(hidden, hidden);
            value = nn.Linear(hidden, hidden);
            RegisterComponents();
        }

        public override Tensor forward(Tensor h)
        {
            var scores = query.call(h).matmul(key.call(h).transpose(1, 2)).div(2.0).softmax(-1);
            return scores.matmul(value.call(h));
        }
    }

    private sealed class Output : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> dense;

        public Output(int hidden) : base(nameof(Output))
        {
            dense = nn.Linear(hidden, hidden);
            RegisterComponents();
        }

        public override Tensor forward(Tensor h) => dense.call(h);
    }
}
