using System.Globalization;
using Microsoft.ML;
using Microsoft.ML.Data;
using Microsoft.ML.Lora;
using Microsoft.ML.Lora.Data;
using Microsoft.ML.Lora.Engine;
using Microsoft.ML.Lora.Internal;
using Microsoft.ML.Lora.Models;
using Microsoft.ML.Runtime;
using static TorchSharp.torch;

[assembly: LoadableClass(typeof(LoraTransformer), typeof(LoraModelFile), null, typeof(SignatureLoadModel),
    "LoRA fine-tuned text model", LoraModelFile.LoaderSignature)]

namespace Microsoft.ML.Lora.Internal;

/// <summary>
/// Saves and loads <see cref="LoraTransformer"/> in ML.NET model files (through ML.NET's internal model-file API).
/// The transformer's zip entry holds, via <c>ctx.Writer</c>: a payload version, the task and label key values, the
/// column names, the adapter settings, the tokenizer settings and the base-model reference (descriptor JSON and weights
/// SHA-256), then (version 2) the requested precision, (version 3) the SHA-256 of the tensor entry, (version 4) the
/// truncation strategy and the inference window stride; and a binary stream <see cref="TensorStreamName"/> with the LoRA and head tensors only.
/// </summary>
internal static class LoraModelFile
{
    /// <summary>Loader signature recorded in the model file; must stay stable.</summary>
    public const string LoaderSignature = "LoraFineTunedTextModel";

    /// <summary>Environment variable that points to the base model when it is not where the model file says.</summary>
    public const string BaseModelOverrideVariable = LoraBaseModels.BaseModelVariable;

    /// <summary>Zip entry (inside the transformer's folder) with the adapter tensors.</summary>
    public const string TensorStreamName = "LoraAdapter.bin";

    private const string ModelSignature = "LORATEXT";

    private const string FileDescription = "LoRA model";

    // 0x00010001: first format.
    // 0x00010002: adds the requested precision (LoraPrecision, int32) after the base-model reference. Version 1 files
    //             were trained in float32, the only precision then, and load as LoraPrecision.Float32.
    // 0x00010003: adds the SHA-256 (hex) of the LoraAdapter.bin entry after the precision; Load refuses an entry whose
    //             bytes do not match it (a damaged file). Readers of version 2 ignore it, so files stay readable by them.
    private const uint VersionWithPrecision = 0x00010002;
    // 0x00010004: adds the truncation strategy (TruncationStrategy, int32) and the inference window stride (int32, 0 for
    //             none) after the checksum. Older files truncated the head and had no windows: they load as Head and 0.
    //             Readers of version 2 and 3 ignore them (a version 4 file then scores with Head truncation).
    private const uint VersionWithChecksum = 0x00010003;
    private const uint VersionWithTruncation = 0x00010004;
    private const uint VersionCurrent = VersionWithTruncation;

    // A file that truncates other than by Head or scores in windows needs a version 4 reader (an older one would score it
    // with Head truncation); any other file stays readable by readers of version 2 on.
    private static VersionInfo GetVersionInfo(uint readable = VersionWithPrecision) => new(
        ModelSignature,
        verWrittenCur: VersionCurrent,
        verReadableCur: readable,
        verWeCanReadBack: 0x00010001,
        loaderAssemblyName: typeof(LoraModelFile).Assembly.FullName,
        loaderSignature: LoaderSignature);

    public static void Save(LoraTransformer transformer, ModelSaveContext ctx)
    {
        ArgumentNullException.ThrowIfNull(ctx);
        ctx.CheckAtModel();
        var model = transformer.Model;
        var settings = model.Settings;
        bool needsTruncation = settings.Truncation != TruncationStrategy.Head || model.WindowStride > 0;
        ctx.SetVersionInfo(GetVersionInfo(needsTruncation ? VersionWithTruncation : VersionWithPrecision));
        var w = ctx.Writer;
        var label = model.Label;
        var columns = transformer.Columns;

        ModelFileSections.WriteLabel(w, label);
        w.Write(columns.Text);
        WriteNullable(w, columns.Pair);
        w.Write(columns.Score);
        w.Write(columns.PredictedLabel);
        w.Write(columns.Probability);
        w.Write(transformer.InferenceBatchSize);

        w.Write(settings.Rank);
        w.Write(settings.Alpha);
        w.Write(settings.Dropout);
        w.Write(settings.TargetModules.Count);
        foreach (var target in settings.TargetModules)
        {
            w.Write(target);
        }

        w.Write(settings.UseRsLora);
        w.Write((int)settings.Pooling);
        w.Write(settings.MaxSequenceLength);
        w.Write(settings.LabelMean);
        w.Write(settings.LabelScale);

        w.Write(model.Tokenizer.LowerCase);
        w.Write(model.Tokenizer.StripAccents);
        w.Write(model.BaseDescriptor.ToJson());
        w.Write(model.BaseWeightsSha256);
        w.Write((int)model.Precision);

        var state = model.AdapterState();
        try
        {
            var (bytes, checksum) = ModelFileSections.EncodeTensors(state);
            w.Write(checksum);
            w.Write((int)settings.Truncation);
            w.Write(model.WindowStride);
            ctx.SaveBinaryStream(TensorStreamName, writer => writer.Write(bytes));
        }
        finally
        {
            LoraTrainer.DisposeState(state);
        }
    }

    /// <summary>Called by ML.NET's loader (<c>mlContext.Model.Load</c>) through <see cref="LoadableClassAttribute"/>.</summary>
    public static LoraTransformer Create(IHostEnvironment env, ModelLoadContext ctx)
    {
        ArgumentNullException.ThrowIfNull(env);
        ArgumentNullException.ThrowIfNull(ctx);
        ModelFileSections.CheckReadable(ctx, VersionCurrent, FileDescription);
        ctx.CheckAtModel(GetVersionInfo());
        var r = ctx.Reader;
        var label = ModelFileSections.ReadLabel(r, FileDescription);
        var columns = new ColumnNames(r.ReadString(), ReadNullable(r), r.ReadString(), r.ReadString(), r.ReadString());
        int inferenceBatchSize = r.ReadInt32();

        int rank = r.ReadInt32();
        double alpha = r.ReadDouble();
        double dropout = r.ReadDouble();
        var targets = new string[r.ReadInt32()];
        for (int i = 0; i < targets.Length; i++)
        {
            targets[i] = r.ReadString();
        }

        bool rsLora = r.ReadBoolean();
        var pooling = (PoolingMode)r.ReadInt32();
        int maxLength = r.ReadInt32();
        float labelMean = r.ReadSingle();
        float labelScale = r.ReadSingle();
        var settings = new AdapterSettings(rank, alpha, dropout, targets, rsLora, pooling, maxLength, labelMean, labelScale);

        bool lowerCase = r.ReadBoolean();
        bool stripAccents = r.ReadBoolean();
        var recorded = PretrainedModel.FromJson(r.ReadString());
        string sha = r.ReadString();
        var precision = ctx.Header.ModelVerWritten >= VersionWithPrecision ? (LoraPrecision)r.ReadInt32() : LoraPrecision.Float32;
        if (!Enum.IsDefined(precision))
        {
            throw new InvalidDataException($"Unknown precision {(int)precision} in this LoRA model file.");
        }

        // Only float32 tensors are stored. A model trained in bfloat16 loads in bfloat16 only on a CUDA device (Auto);
        // on the CPU it is a float32 model. One trained in float32 stays float32 everywhere.
        var loadPrecision = precision == LoraPrecision.Float32 ? LoraPrecision.Float32 : LoraPrecision.Auto;

        string? checksum = ctx.Header.ModelVerWritten >= VersionWithChecksum ? r.ReadString() : null;
        if (ctx.Header.ModelVerWritten >= VersionWithTruncation)
        {
            var truncation = (TruncationStrategy)r.ReadInt32();
            int stride = r.ReadInt32();
            if (!Enum.IsDefined(truncation) || stride < 0 || stride > maxLength - 2)
            {
                throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                    $"This LoRA model file has truncation {(int)truncation} and window stride {stride}; expected Head (0) or HeadTail (1) and a stride from 0 to {maxLength - 2}."));
            }

            settings = settings with { Truncation = truncation, WindowStride = stride };
        }
        var state = ModelFileSections.ReadTensors(ctx, TensorStreamName, checksum, FileDescription);
        try
        {
            var device = DeviceResolver.Resolve(env);
            var dtype = DeviceResolver.ResolveEncoderDtype(loadPrecision, device);
            var lease = BaseModelResolver.Resolve(recorded, sha, device, dtype, out var found);
            var model = LoraTextModel.Create(lease, found, device, loadPrecision, label, settings, seed: 0, LoraBaseModels.PrivateMergedCopies);
            try
            {
                if (model.Tokenizer.LowerCase != lowerCase || model.Tokenizer.StripAccents != stripAccents)
                {
                    throw new InvalidDataException(string.Create(CultureInfo.InvariantCulture,
                        $"The base model {found} tokenizes with lowerCase={model.Tokenizer.LowerCase}, stripAccents={model.Tokenizer.StripAccents}; this LoRA model was trained with lowerCase={lowerCase}, stripAccents={stripAccents}."));
                }

                model.LoadAdapterState(state);
                model.Model.eval();
                return new LoraTransformer(model, columns, inferenceBatchSize) { Environment = env };
            }
            catch
            {
                model.Dispose();
                throw;
            }
        }
        finally
        {
            LoraTrainer.DisposeState(state);
        }
    }

    private static void WriteNullable(BinaryWriter w, string? value)
    {
        w.Write(value is not null);
        if (value is not null)
        {
            w.Write(value);
        }
    }

    private static string? ReadNullable(BinaryReader r) => r.ReadBoolean() ? r.ReadString() : null;
}
