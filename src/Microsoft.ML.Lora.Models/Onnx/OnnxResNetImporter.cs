using System.Globalization;
using Microsoft.ML.Lora.Models.Onnx.Proto;
using Microsoft.ML.Lora.Models.Vision;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Models.Onnx;

/// <summary>
/// Reads a ResNet of basic blocks from an ONNX graph whose initialisers carry no module names (the ML.NET ResNet-18 is a
/// CNTK export: <c>Parameter10</c>, <c>Constant98</c>, …). The walk starts at the graph input: Conv → BatchNormalization →
/// Relu → MaxPool is the stem; then each block is read from the value x entering it: the consumer convolution whose
/// BatchNormalization feeds a Relu is the main path (conv1 → bn1 → relu → conv2 → bn2 → Add), a convolution whose
/// BatchNormalization feeds the Add directly is the shortcut (downsample), and the Add's Relu output is the next x. A block
/// with a shortcut or a stride starts a new stage. The walk ends at the final AveragePool/GlobalAveragePool.
/// </summary>
internal static class OnnxResNetImporter
{
    public static ResNetSpec Import(Stream onnx, string source, string? baseDirectory)
    {
        var graph = OnnxGraph.Read(onnx, source);
        return new Walker(graph, baseDirectory).Run();
    }

    private sealed class Walker(OnnxGraph graph, string? baseDirectory)
    {
        private readonly List<Tensor> created = [];

        public ResNetSpec Run()
        {
            try
            {
                var inputs = graph.Graph.Input.Select(i => i.Name).Where(n => !graph.Initializers.ContainsKey(n)).ToList();
                if (inputs.Count != 1)
                {
                    throw Error($"expected one image input, found [{string.Join(", ", inputs)}]");
                }

                var stemConv = Single(inputs[0], "Conv");
                var (conv1, bn1, stemRelu) = ConvBnRelu(stemConv);
                var pool = Single(stemRelu, "MaxPool");
                var maxPool = new MaxPoolSpec(OnnxGraph.Ints(pool, "kernel_shape") ?? throw Error($"MaxPool '{pool.Name}' has no kernel_shape"),
                    OnnxGraph.Ints(pool, "strides") ?? [1, 1], Pads(pool));
                CheckAutoPad(pool);
                string x = pool.Output[0];
                var stages = new List<List<BasicBlockSpec>>();
                long[]? finalKernel = null;
                while (true)
                {
                    var next = graph.ConsumersOf(x);
                    var end = next.FirstOrDefault(n => n.OpType is "AveragePool" or "GlobalAveragePool");
                    if (end is not null)
                    {
                        if (end.OpType == "AveragePool")
                        {
                            if (Pads(end).Any(p => p != 0))
                            {
                                throw Error($"the final AveragePool '{end.Name}' pads its input; a plain average over the last feature map is expected");
                            }

                            finalKernel = OnnxGraph.Ints(end, "kernel_shape");
                        }

                        break;
                    }

                    var block = Block(x, out x);
                    if (stages.Count == 0 || block.Downsample is not null || block.Conv1.Stride.Any(s => s != 1))
                    {
                        stages.Add([]);
                    }

                    stages[^1].Add(block);
                }

                if (stages.Count == 0)
                {
                    throw Error("no residual block was found after the stem");
                }

                return new ResNetSpec(conv1, bn1, maxPool, stages.Select(s => (IReadOnlyList<BasicBlockSpec>)s).ToList(), finalKernel);
            }
            catch
            {
                foreach (var t in created)
                {
                    t.Dispose();
                }

                throw;
            }
        }

        private BasicBlockSpec Block(string x, out string output)
        {
            var convs = graph.ConsumersOf(x).Where(n => n.OpType == "Conv").ToList();
            NodeProto? main = null;
            NodeProto? shortcut = null;
            foreach (var conv in convs)
            {
                var bn = Single(conv.Output[0], "BatchNormalization");
                if (graph.ConsumersOf(bn.Output[0]).Any(n => n.OpType == "Relu"))
                {
                    main = conv;
                }
                else
                {
                    shortcut = conv;
                }
            }

            if (main is null || convs.Count > 2)
            {
                throw Error($"value '{x}' does not enter a residual block (consumers: {string.Join(", ", graph.ConsumersOf(x).Select(n => $"{n.OpType} '{n.Name}'"))})");
            }

            var (c1, b1, relu) = ConvBnRelu(main);
            var conv2 = Single(relu, "Conv");
            var c2 = Conv(conv2);
            var bn2 = Single(conv2.Output[0], "BatchNormalization");
            var b2 = BatchNorm(bn2);
            var add = Single(bn2.Output[0], "Add");
            (ConvSpec, BatchNormSpec)? downsample = null;
            string expectedShortcut = x;
            if (shortcut is not null)
            {
                var sbn = Single(shortcut.Output[0], "BatchNormalization");
                downsample = (Conv(shortcut), BatchNorm(sbn));
                expectedShortcut = sbn.Output[0];
            }

            string? other = add.Input.FirstOrDefault(i => i != bn2.Output[0]);
            if (other != expectedShortcut)
            {
                throw Error($"Add '{add.Name}' adds '{other}', expected the block's shortcut '{expectedShortcut}' (a block with three convolutions, as in ResNet-50, is not supported)");
            }

            output = Single(add.Output[0], "Relu").Output[0];
            return new BasicBlockSpec(c1, b1, c2, b2, downsample);
        }

        private (ConvSpec Conv, BatchNormSpec Bn, string ReluOutput) ConvBnRelu(NodeProto conv)
        {
            var c = Conv(conv);
            var bnNode = Single(conv.Output[0], "BatchNormalization");
            var bn = BatchNorm(bnNode);
            var relu = Single(bnNode.Output[0], "Relu");
            return (c, bn, relu.Output[0]);
        }

        private ConvSpec Conv(NodeProto node)
        {
            CheckAutoPad(node);
            var weight = Initializer(node, 1);
            if (weight.dim() != 4)
            {
                throw Error($"Conv '{node.Name}' has a weight of shape [{string.Join(", ", weight.shape)}]; a 2-D convolution is expected");
            }

            var bias = node.Input.Count > 2 && node.Input[2].Length > 0 ? Initializer(node, 2) : null;
            return new ConvSpec(weight, bias, OnnxGraph.Ints(node, "strides") ?? [1, 1], Pads(node),
                OnnxGraph.Ints(node, "dilations") ?? [1, 1], OnnxGraph.Int(node, "group", 1));
        }

        private BatchNormSpec BatchNorm(NodeProto node)
        {
            if (node.Input.Count < 5)
            {
                throw Error($"BatchNormalization '{node.Name}' has {node.Input.Count} inputs, expected 5");
            }

            // float32 ε as written (9.999999747e-06), read back as the shortest decimal (1e-05).
            double epsilon = double.Parse(OnnxGraph.Float(node, "epsilon", 1e-5f).ToString("R", CultureInfo.InvariantCulture), CultureInfo.InvariantCulture);
            return new BatchNormSpec(Initializer(node, 1), Initializer(node, 2), Initializer(node, 3), Initializer(node, 4), epsilon);
        }

        private Tensor Initializer(NodeProto node, int index)
        {
            string name = node.Input[index];
            if (!graph.Initializers.TryGetValue(name, out var proto) || !OnnxTensor.IsFloatingPoint(proto))
            {
                throw Error($"input {index} ('{name}') of {node.OpType} '{node.Name}' is not a floating-point initialiser");
            }

            var values = OnnxTensor.ToFloat32(proto, baseDirectory);
            var t = tensor(values, [.. proto.Dims], ScalarType.Float32);
            created.Add(t);
            return t;
        }

        private NodeProto Single(string value, string opType)
        {
            var matches = graph.ConsumersOf(value).Where(n => n.OpType == opType).ToList();
            if (matches.Count != 1)
            {
                throw Error($"expected one {opType} reading '{value}', found {matches.Count} (consumers: {string.Join(", ", graph.ConsumersOf(value).Select(n => n.OpType))})");
            }

            return matches[0];
        }

        private long[] Pads(NodeProto node)
        {
            var pads = OnnxGraph.Ints(node, "pads") ?? [0, 0, 0, 0];
            return pads.Length == 4 ? pads : throw Error($"{node.OpType} '{node.Name}' has {pads.Length} pads, expected 4");
        }

        private void CheckAutoPad(NodeProto node)
        {
            string? autoPad = OnnxGraph.String(node, "auto_pad");
            if (autoPad is not null && autoPad.Length > 0 && autoPad != "NOTSET")
            {
                throw Error($"{node.OpType} '{node.Name}' uses auto_pad = {autoPad}; explicit pads are supported");
            }
        }

        private InvalidDataException Error(string message) =>
            new($"{graph.Source} is not a ResNet of basic blocks as expected: {message}.");
    }
}
