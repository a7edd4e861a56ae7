using Microsoft.ML.Lora.Engine.Tasks;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.Lora.Engine;

/// <summary>
/// One model family's trainable model, as the trainer and the model file see it: a frozen shared base with LoRA adapters
/// and a task head, its rows → input tensors → head outputs, and the adapter state a model file stores. Text
/// (<see cref="LoraTextModel"/>: BERT + tokenizer) implements it, and so does each further family; what the outputs mean belongs to the task (<see cref="LabelInfo.Task"/>).
/// </summary>
/// <typeparam name="TRow">The family's training row.</typeparam>
internal interface ILoraModel<TRow> : IDisposable
    where TRow : ILabeledRow
{
    /// <summary>The whole module tree (train/eval mode).</summary>
    nn.Module Module { get; }

    Device Device { get; }

    /// <summary>The dtype the frozen base runs in (for the training log).</summary>
    ScalarType EncoderDtype { get; }

    /// <summary>Task and label facts.</summary>
    LabelInfo Label { get; }

    /// <summary>The label standardisation the head was trained with.</summary>
    LabelScaling Scaling { get; }

    IReadOnlyList<string> AdaptedModules { get; }

    long TrainableParameterCount { get; }

    long TotalParameterCount { get; }

    /// <summary>Trainable parameters (LoRA A/B and the head).</summary>
    IEnumerable<TorchSharp.Modules.Parameter> TrainableParameters();

    /// <summary>Runs a batch of rows through the model: head outputs [n, Label.OutputCount].</summary>
    Tensor Forward(IReadOnlyList<TRow> batch);

    /// <summary>Cuts an epoch's rows into training batches (the text family may group them by length).</summary>
    IEnumerable<TRow[]> TrainingBatches(IEnumerable<TRow> rows, int batchSize, bool groupByLength, Random random);

    /// <summary>The tensors a model file stores: every LoRA tensor and the head, copied to the CPU.</summary>
    SortedDictionary<string, Tensor> AdapterState();

    /// <summary>Copies stored adapter tensors into the model (all must be present, with matching shapes).</summary>
    void LoadAdapterState(IReadOnlyDictionary<string, Tensor> state);
}
