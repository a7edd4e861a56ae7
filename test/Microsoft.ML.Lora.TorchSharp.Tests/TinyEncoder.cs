using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Tests;

/// <summary>
/// A two-block, BERT-shaped model for injection tests: paths like <c>layer.0.attention.self.query</c> and
/// <c>layer.1.attention.output.dense</c>, an embedding, a Sequential head and a classifier.
/// </summary>
internal sealed class TinyEncoder : nn.Module<Tensor, Tensor>
{
    private readonly nn.Module<Tensor, Tensor> word_embeddings;
    private readonly ModuleList<Block> layer;
    private readonly Sequential head;
    private readonly nn.Module<Tensor, Tensor> classifier;

    public TinyEncoder(int vocab = 20, int hidden = 8) : base(nameof(TinyEncoder))
    {
        word_embeddings = nn.Embedding(vocab, hidden);
        layer = nn.ModuleList(new Block(hidden), new Block(hidden));
        head = nn.Sequential(("dense", nn.Linear(hidden, hidden)), ("act", nn.Tanh()), ("out_proj", nn.Linear(hidden, hidden)));
        classifier = nn.Linear(hidden, 3);
        RegisterComponents();
    }

    public ModuleList<Block> Layers => layer;

    public nn.Module<Tensor, Tensor> Classifier => classifier;

    public Sequential Head => head;

    public override Tensor forward(Tensor ids)
    {
        var h = word_embeddings.call(ids);
        foreach (var block in layer)
        {
            h = block.call(h);
        }

        return classifier.call(head.call(h).mean([1]));
    }

    internal sealed class Block : nn.Module<Tensor, Tensor>
    {
        private readonly Attention attention;

        public Block(int hidden) : base(nameof(Block))
        {
            attention = new Attention(hidden);
            RegisterComponents();
        }

        public Attention Attn => attention;

        public override Tensor forward(Tensor x) => attention.call(x);
    }

    internal sealed class Attention : nn.Module<Tensor, Tensor>
    {
        private readonly SelfAttention self;
        private readonly Output output;

        public Attention(int hidden) : base(nameof(Attention))
        {
            self = new SelfAttention(hidden);
            output = new Output(hidden);
            RegisterComponents();
        }

        public SelfAttention Self => self;

        public override Tensor forward(Tensor x) => output.call(self.call(x)) + x;
    }

    internal sealed class SelfAttention : nn.Module<Tensor, Tensor>
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

        public nn.Module<Tensor, Tensor> Query => query;

        public nn.Module<Tensor, Tensor> Value => value;

        public override Tensor forward(Tensor x)
        {
            var scores = query.call(x).matmul(key.call(x).transpose(1, 2)).softmax(-1);
            return scores.matmul(value.call(x));
        }
    }

    internal sealed class Output : nn.Module<Tensor, Tensor>
    {
        private readonly nn.Module<Tensor, Tensor> dense;

        public Output(int hidden) : base(nameof(Output))
        {
            dense = nn.Linear(hidden, hidden);
            RegisterComponents();
        }

        public override Tensor forward(Tensor x) => dense.call(x);
    }
}

/// <summary>A model whose linear layer is held in a field of the sealed type Linear, which injection cannot swap.</summary>
internal sealed class SealedFieldModel : nn.Module<Tensor, Tensor>
{
    private readonly Linear proj;

    public SealedFieldModel() : base(nameof(SealedFieldModel))
    {
        proj = nn.Linear(4, 4);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => proj.call(x);
}

/// <summary>Holds a module whose name contains "lora" but which is not a LoRA factor.</summary>
internal sealed class NamedLoraHeadModel : nn.Module<Tensor, Tensor>
{
    private readonly nn.Module<Tensor, Tensor> body;
    private readonly nn.Module<Tensor, Tensor> my_lora_head;

    public NamedLoraHeadModel() : base(nameof(NamedLoraHeadModel))
    {
        body = lora.Linear(4, 4, r: 2);
        my_lora_head = nn.Linear(4, 2);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => my_lora_head.call(body.call(x));
}
